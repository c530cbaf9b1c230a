"""Rule 2's algorithm: shorten a long tool output without losing what matters.

For text over ``max_tool_output_chars``:

1. keep the first ``head_lines`` and the last ``tail_lines`` lines; in between,
   keep every error line verbatim and replace each run of other lines with
   ``[...truncated N lines...]`` (a run of one line is kept: a marker would not
   be shorter);
2. shorten any remaining line longer than ``max_tool_output_chars`` (a minified
   JSON blob, a progress bar) to its first half and last quarter of that size
   around ``[...truncated N chars...]``; error lines are exempt.

Markers name, after ``refs:``, the paths and URLs of the removed text that the
kept text does not already show, so nothing the preservation guarantee covers is
lost: ``[...truncated 40 lines; refs: src/app.py https://x.org ...]``.

Tool results are often JSON (Hermes' terminal tool returns
``{"output": "...", "exit_code": 1}``), where a whole shell log is one physical
line with escaped newlines. Line-based cutting would do nothing there, and a
character cut would break the JSON, so JSON objects and arrays are truncated
structurally instead: each long string value gets the text treatment above,
long arrays keep their first and last items around a marker item, and the
result is serialised again. Keys (``exit_code``, ``error``) are never removed,
so a failed result still reads as failed afterwards, and the values of keys
that name error text (``error``, ``stderr``, ``exception``, ``traceback``) are
kept whole.

Idempotence: text that already carries a line marker is not cut again, lines
that carry a character marker are not shortened again, and arrays holding an
item marker are not cut again, so truncating twice gives the same bytes.
"""

from __future__ import annotations

import json
import re
from typing import Any

from persona.compact.config import CompactionConfig
from persona.compact.outcome import error_lines, is_error_line
from persona.compact.refs import find_refs, format_refs, missing_refs

LINE_MARKER_RE = re.compile(r"^\[\.\.\.truncated \d+ lines(?:; refs: .* )?\.\.\.\]$")
CHAR_MARKER_RE = re.compile(r"\[\.\.\.truncated \d+ chars(?:; refs: [^\n]*? )?\.\.\.\]")
ITEM_MARKER_RE = re.compile(r"^\[\.\.\.truncated \d+ items(?:; refs: .* )?\.\.\.\]$")
ERROR_KEY_RE = re.compile("error|stderr|exception|traceback")
ANY_MARKER_RE = re.compile(r"\[\.\.\.truncated \d+ (?:lines|chars|items)[;.]")


def marker(count: int, unit: str, refs: list[str]) -> str:
    """``[...truncated N unit...]``, naming ``refs`` when there are any."""
    if refs:
        return f"[...truncated {count} {unit}; refs: {format_refs(refs)} ...]"
    return f"[...truncated {count} {unit}...]"


def is_truncated(text: str) -> bool:
    """True when ``text`` already went through rule 2."""
    return ANY_MARKER_RE.search(text) is not None


class Truncator:
    """Applies rule 2 with one config's limits."""

    def __init__(self, config: CompactionConfig) -> None:
        if config.max_tool_output_chars is None:
            raise ValueError("rule 2 is off: max_tool_output_chars is null")
        self.config = config
        self.max_chars: int = config.max_tool_output_chars
        self.head = config.head_lines
        self.tail = config.tail_lines

    # -- plain text -------------------------------------------------------

    def text(self, text: str) -> str:
        """Truncate ``text`` if it is over the limit; otherwise return it unchanged."""
        if len(text) <= self.max_chars:
            return text
        lines = text.split("\n")
        if len(lines) > self.head + self.tail + 1 and not any(
            LINE_MARKER_RE.match(line) for line in lines
        ):
            lines = self._cut_lines(lines)
        return "\n".join(self._shorten(line) for line in lines)

    def _cut_lines(self, lines: list[str]) -> list[str]:
        split = len(lines) - self.tail
        head, middle, tail = lines[: self.head], lines[self.head : split], lines[split:]
        keep = error_lines(middle, self.config)
        visible = "\n".join(
            [*head, *tail, *(line for line, kept in zip(middle, keep, strict=True) if kept)]
        )
        out = list(head)
        run: list[str] = []

        def flush() -> None:
            nonlocal visible
            if len(run) == 1:
                out.append(run[0])
            elif run:
                refs = missing_refs(find_refs("\n".join(run)), visible)
                out.append(marker(len(run), "lines", refs))
                visible += "\n" + format_refs(refs)
            run.clear()

        for line, kept in zip(middle, keep, strict=True):
            if kept:
                flush()
                out.append(line)
            else:
                run.append(line)
        flush()
        out.extend(tail)
        return out

    def _shorten(self, line: str) -> str:
        if (
            len(line) <= self.max_chars
            or CHAR_MARKER_RE.search(line)
            or LINE_MARKER_RE.match(line)
            or is_error_line(line, self.config)
        ):
            return line
        keep_head = self.max_chars // 2
        keep_tail = self.max_chars // 4
        head = line[:keep_head]
        tail = line[len(line) - keep_tail :] if keep_tail else ""
        removed = len(line) - keep_head - keep_tail
        refs = missing_refs(find_refs(line), head + "\n" + tail)
        return head + marker(removed, "chars", refs) + tail

    # -- JSON ---------------------------------------------------------------

    def _json(self, value: Any) -> tuple[Any, bool]:
        if isinstance(value, str):
            new = self.text(value)
            return new, new != value
        if isinstance(value, dict):
            changed = False
            out_dict: dict[str, Any] = {}
            for key, item in value.items():
                if ERROR_KEY_RE.search(key.lower()):
                    # The error text itself ("error", "stderr", "traceback"): never cut.
                    out_dict[key] = item
                    continue
                out_dict[key], item_changed = self._json(item)
                changed = changed or item_changed
            return (out_dict, True) if changed else (value, False)
        if isinstance(value, list):
            changed = False
            items = []
            for item in value:
                new_item, item_changed = self._json(item)
                items.append(new_item)
                changed = changed or item_changed
            cut = self._cut_items(items)
            if cut is not None:
                return cut, True
            return (items, True) if changed else (value, False)
        return value, False

    def _cut_items(self, items: list[Any]) -> list[Any] | None:
        if len(items) <= self.head + self.tail + 1:
            return None
        if any(isinstance(item, str) and ITEM_MARKER_RE.match(item) for item in items):
            return None
        texts = [json.dumps(item, ensure_ascii=False) for item in items]
        if sum(len(text) for text in texts) + len(texts) <= self.max_chars:
            return None
        split = len(items) - self.tail
        keep = [
            index < self.head or index >= split or is_error_line(text, self.config)
            for index, text in enumerate(texts)
        ]
        visible = "\n".join(text for text, kept in zip(texts, keep, strict=True) if kept)
        out: list[Any] = []
        run: list[int] = []

        def flush() -> None:
            nonlocal visible
            if len(run) == 1:
                out.append(items[run[0]])
            elif run:
                refs = missing_refs(find_refs("\n".join(texts[i] for i in run)), visible)
                out.append(marker(len(run), "items", refs))
                visible += "\n" + format_refs(refs)
            run.clear()

        for index, kept in enumerate(keep):
            if kept:
                flush()
                out.append(items[index])
            else:
                run.append(index)
        flush()
        return out if len(out) < len(items) else None

    # -- tool results ---------------------------------------------------------

    def tool_output(self, text: str) -> str:
        """Rule 2 on one tool result: structural for JSON, line-based otherwise."""
        if len(text) <= self.max_chars:
            return text
        if text.lstrip()[:1] in ("{", "["):
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if isinstance(obj, dict | list):
                new, changed = self._json(obj)
                return json.dumps(new, ensure_ascii=False) if changed else text
        return self.text(text)
