"""Decide whether a tool call failed, and which lines of its output are error text.

Rule 1 only collapses *succeeded* calls; a failed call stays, and rule 2 keeps
its error lines when it truncates. Tool results carry no standard status field,
so this is a heuristic, and it leans towards "failed": calling a success a
failure only costs some compaction, while calling a failure a success would
drop the error text the preservation guarantee protects.

A tool result counts as failed when any of these holds:

* the message has ``"is_error": true`` (Anthropic-style results);
* its text is a JSON object with a truthy ``error``, ``success: false`` or
  ``ok: false``, a ``status`` of error/failed/failure/fail, a non-zero
  ``exit_code``/``exit_status``/``returncode``/``return_code``, or an HTTP
  ``status_code`` of 400 or more (Hermes' terminal tool returns
  ``{"output": ..., "exit_code": ..., "error": ...}``);
* otherwise, when it is not a JSON object carrying one of those status keys:
  its stripped text starts with one of ``error_prefixes``, or one of
  ``error_patterns`` (regular expressions) is found in it.

A JSON result that does report its status (``"exit_code": 0, "error": null``)
is taken at its word: a successful ``grep`` whose output mentions "No such
file or directory" did not fail.

Prefixes and patterns are matched against the *lower-cased* text, so they are
written in lower case and need no ``(?i)``: case-insensitive regexes are an
order of magnitude slower in Python's ``re``, and these run over every tool
result of a session.

An *error line* (kept verbatim by truncation) is a line that starts with an
error prefix, on which an error pattern match starts, or that contains one of
``ERROR_WORDS`` (error, exception, traceback, fatal, fail, panic, denied,
"not found", "no such file", abort, segfault), all in lower-cased text.
"""

from __future__ import annotations

import bisect
import json
import re
from typing import Any

from persona.compact.config import CompactionConfig

ERROR_WORDS = re.compile(
    "error|exception|traceback|fatal|fail|panic|denied|not found|no such file|abort|segfault"
    "|segmentation fault"
)

_EXIT_KEYS = ("exit_code", "exit_status", "returncode", "return_code")
_STATUS_KEYS = frozenset({"error", "success", "ok", "status", "status_code", *_EXIT_KEYS})
_FAILED_STATUS = frozenset({"error", "failed", "failure", "fail"})


def _json_failed(obj: dict[str, Any]) -> bool:
    error = obj.get("error")
    if error not in (None, False, "", [], {}, 0):
        return True
    if obj.get("success") is False or obj.get("ok") is False:
        return True
    status = obj.get("status")
    if isinstance(status, str) and status.strip().lower() in _FAILED_STATUS:
        return True
    for key in _EXIT_KEYS:
        code = obj.get(key)
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            return True
    code = obj.get("status_code")
    return isinstance(code, int) and not isinstance(code, bool) and code >= 400


def json_object(text: str) -> dict[str, Any] | None:
    """``text`` parsed, when it is a JSON object; otherwise None."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def tool_failed(
    message: dict[str, Any],
    text: str,
    config: CompactionConfig,
    parsed: dict[str, Any] | None = None,
) -> bool:
    """True when the tool result ``message`` (whose text is ``text``) looks like a failure.

    ``parsed`` is ``json_object(text)`` when the caller already has it.
    """
    if message.get("is_error") is True:
        return True
    obj = parsed if parsed is not None else json_object(text)
    if obj is not None and not _STATUS_KEYS.isdisjoint(obj):
        return _json_failed(obj)
    lower = text.lower()
    if lower.lstrip()[:64].startswith(config.error_prefixes):
        return True
    return any(pattern.search(lower) for pattern in config.compiled_patterns)


def error_lines(lines: list[str], config: CompactionConfig) -> list[bool]:
    """``is_error_line`` for many lines at once, in one regex pass per pattern.

    The patterns run over the lines joined with newlines, and a line counts
    when a match starts on it: the same as testing each line for patterns
    anchored with ``(?m)^`` or not at all, and far cheaper than a search per line.
    """
    lowered = [line.lower() for line in lines]
    flags = [False] * len(lines)
    starts = []
    offset = 0
    for line in lowered:
        starts.append(offset)
        offset += len(line) + 1
    text = "\n".join(lowered)
    for pattern in (ERROR_WORDS, *config.compiled_patterns):
        for match in pattern.finditer(text):
            flags[bisect.bisect_right(starts, match.start()) - 1] = True
    prefixes = config.error_prefixes
    for index, line in enumerate(lowered):
        if not flags[index] and line.strip()[:64].startswith(prefixes):
            flags[index] = True
    return flags


def is_error_line(line: str, config: CompactionConfig) -> bool:
    """True when ``line`` carries error text that truncation must keep."""
    lower = line.lower()
    if ERROR_WORDS.search(lower) or lower.strip()[:64].startswith(config.error_prefixes):
        return True
    return any(pattern.search(lower) for pattern in config.compiled_patterns)
