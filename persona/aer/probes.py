"""Probe files: the behavioural tests that decide whether a section can go.

A probe file is a YAML list. Each probe::

    - id: name-1                 # unique string
      section: identity          # the prompt section this probe exercises
      messages:                  # user turns; a plain string is one turn, a
        - What is your name?     # mapping {role: user|assistant, content}
      checks:                    # case-insensitive regexes (the `regex` module)
        must_match: ["timmy"]
        must_not_match: ["smollm"]
      reference: I am Timmy.     # optional: the answer KL is teacher-forced on

Validation is strict (unknown keys, wrong types, missing fields, duplicate ids,
unknown sections, bad regexes, a check list that could never fail) and every
error names the probe and the field, because a probe that silently tests
nothing would make a section look droppable.

Loading is hardened: the file is size-capped and YAML aliases are counted
while composing, since ``yaml.safe_load`` happily builds a "billion laughs"
document whose shared references explode the first time anything walks them.
Regexes run with a timeout, so a catastrophically backtracking pattern costs a
bounded time and then counts as a failed check with a note.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex
import yaml

from persona.aer.sections import slugify
from persona.errors import InvalidInput, NotFound

#: Probe files larger than this are refused before parsing.
MAX_PROBE_FILE_BYTES = 1 << 20
#: YAML alias uses allowed per document (ordinary files use a handful).
MAX_YAML_ALIASES = 100
#: Nodes a probe document may expand to once aliases are followed.
MAX_YAML_NODES = 100_000
#: Seconds one regex may run against one answer before it counts as failed.
REGEX_TIMEOUT_S = 0.5

_PROBE_KEYS = {"id", "section", "messages", "checks", "reference"}
_CHECK_KEYS = {"must_match", "must_not_match"}
_ROLES = {"user", "assistant"}


@dataclass(frozen=True)
class Checks:
    must_match: tuple[str, ...] = ()
    must_not_match: tuple[str, ...] = ()


@dataclass(frozen=True)
class Probe:
    """One test. ``messages`` are chat messages (role, content), last one user."""

    id: str
    section: str
    messages: tuple[Mapping[str, str], ...]
    checks: Checks
    reference: str | None = None

    @property
    def messages_hash(self) -> str:
        """sha256 of the canonical JSON of the turns: part of run-cache keys."""
        payload = json.dumps([dict(m) for m in self.messages], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CheckResult:
    """Whether an answer passed; ``failures`` says which checks failed and why."""

    passed: bool
    failures: tuple[str, ...] = ()


class _TooManyAliases(Exception):
    pass


class _LimitedSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents using more than MAX_YAML_ALIASES aliases."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._alias_count = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._alias_count += 1
            if self._alias_count > MAX_YAML_ALIASES:
                raise _TooManyAliases
        return super().compose_node(parent, index)


def _check_expanded_size(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases expand to more than MAX_YAML_NODES nodes.

    The classic bomb needs only a few dozen aliases (nine levels of nine), so
    counting aliases is not enough: this computes each node's expanded size
    once (memoised by identity, so the check itself is linear in the composed
    graph) and also refuses recursive anchors.
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise InvalidInput(
                f"{source}: recursive YAML alias", "write the probes out instead of reusing anchors"
            )
        in_progress.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
                if total > MAX_YAML_NODES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > MAX_YAML_NODES:
                    break
        in_progress.discard(key)
        sizes[key] = total
        return total

    if size(root) > MAX_YAML_NODES:
        raise InvalidInput(
            f"{source}: YAML aliases expand to more than {MAX_YAML_NODES} nodes (refused: alias bomb)",
            "write the probes out instead of reusing anchors",
        )


def safe_load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` with a size cap, an alias budget and an expanded-size cap."""
    if len(text.encode("utf-8")) > MAX_PROBE_FILE_BYTES:
        raise InvalidInput(
            f"{source}: probe file larger than {MAX_PROBE_FILE_BYTES} bytes",
            "split it into smaller files",
        )
    loader: _LimitedSafeLoader | None = None
    try:
        # Inside the try: the reader already refuses control characters on construction.
        loader = _LimitedSafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, source)
        return loader.construct_document(node)
    except _TooManyAliases:
        raise InvalidInput(
            f"{source}: more than {MAX_YAML_ALIASES} YAML aliases (refused: alias bomb)",
            "write the probes out instead of reusing anchors",
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise InvalidInput(
            f"{where}: invalid YAML: {exc.problem or exc}", "check the YAML syntax"
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source}: invalid YAML: {exc}", "check the YAML syntax") from None
    except RecursionError:
        raise InvalidInput(f"{source}: YAML nested too deeply", "flatten the probe file") from None
    finally:
        if loader is not None:
            loader.dispose()


@functools.lru_cache(maxsize=1024)
def compile_check(pattern: str) -> regex.Pattern[str]:
    """Compile a check regex case-insensitively (cached)."""
    return regex.compile(pattern, regex.IGNORECASE)


def _search(pattern: str, text: str, timeout: float) -> bool | None:
    """True/False for match/no match; None when the regex ran out of time."""
    try:
        return compile_check(pattern).search(text, timeout=timeout) is not None
    except TimeoutError:
        return None


def run_checks(probe: Probe, answer: str, timeout: float = REGEX_TIMEOUT_S) -> CheckResult:
    """Apply a probe's checks to an answer: all must_match match, no must_not_match does.

    A regex that times out counts as a failed check, whichever list it is in:
    a check that cannot be evaluated has not been passed.
    """
    failures: list[str] = []
    for pat in probe.checks.must_match:
        hit = _search(pat, answer, timeout)
        if hit is None:
            failures.append(f"must_match {pat!r} timed out after {timeout:g}s (counted as failed)")
        elif not hit:
            failures.append(f"must_match {pat!r} did not match")
    for pat in probe.checks.must_not_match:
        hit = _search(pat, answer, timeout)
        if hit is None:
            failures.append(
                f"must_not_match {pat!r} timed out after {timeout:g}s (counted as failed)"
            )
        elif hit:
            failures.append(f"must_not_match {pat!r} matched")
    return CheckResult(not failures, tuple(failures))


def _err(source: str, who: str, field: str, msg: str, hint: str = "") -> InvalidInput:
    return InvalidInput(f"{source}: {who}: field '{field}': {msg}", hint)


def _str_list(value: Any, source: str, who: str, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _err(
            source,
            who,
            field,
            f"expected a string or a list of strings, got {type(value).__name__}",
        )
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _err(
                source, who, f"{field}[{i}]", f"expected a string, got {type(item).__name__}"
            )
        out.append(item)
    return tuple(out)


def _validate_regexes(pats: Sequence[str], source: str, who: str, field: str) -> None:
    for i, pat in enumerate(pats):
        if not pat:
            raise _err(
                source, who, f"{field}[{i}]", "empty regex", "an empty pattern matches every answer"
            )
        try:
            compile_check(pat)
        except regex.error as exc:
            raise _err(source, who, f"{field}[{i}]", f"invalid regex {pat!r}: {exc}") from None


def _messages(value: Any, source: str, who: str) -> tuple[Mapping[str, str], ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _err(source, who, "messages", "expected a non-empty list of user turns")
    out: list[Mapping[str, str]] = []
    for i, item in enumerate(value):
        field = f"messages[{i}]"
        if isinstance(item, str):
            role, content = "user", item
        elif isinstance(item, dict):
            extra = set(item) - {"role", "content"}
            if extra:
                raise _err(
                    source, who, field, f"unknown key(s) {', '.join(sorted(map(str, extra)))}"
                )
            role, content = item.get("role"), item.get("content")
            if role not in _ROLES:
                raise _err(
                    source,
                    who,
                    f"{field}.role",
                    f"expected 'user' or 'assistant', got {role!r}",
                    "the system prompt is the prompt file under test; probes hold only the turns",
                )
            if not isinstance(content, str):
                raise _err(source, who, f"{field}.content", "expected a string")
        else:
            raise _err(
                source,
                who,
                field,
                f"expected a string or a {{role, content}} mapping, got {type(item).__name__}",
            )
        if not content.strip():
            raise _err(source, who, field, "empty message")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise _err(source, who, "messages", "the last turn must be a user turn")
    return tuple(out)


def parse_probes(
    data: Any, source: str = "<probes>", sections: Iterable[str] | None = None
) -> list[Probe]:
    """Validate loaded YAML into probes. ``sections``: the prompt's section names, if known."""
    if not isinstance(data, list):
        raise InvalidInput(f"{source}: expected a YAML list of probes, got {type(data).__name__}")
    if not data:
        raise InvalidInput(f"{source}: no probes", "add at least one probe")
    known = list(sections) if sections is not None else None
    probes: list[Probe] = []
    seen: set[str] = set()
    for n, item in enumerate(data):
        who = f"probe #{n + 1}"
        if not isinstance(item, dict):
            raise InvalidInput(f"{source}: {who}: expected a mapping, got {type(item).__name__}")
        pid = item.get("id")
        if "id" not in item:
            raise _err(source, who, "id", "missing")
        if not isinstance(pid, str) or not pid.strip():
            raise _err(
                source, who, "id", f"expected a non-empty string, got {pid!r}", "quote numeric ids"
            )
        who = f"probe {pid!r}"
        if pid in seen:
            raise _err(source, who, "id", "duplicate id")
        seen.add(pid)
        extra = set(item) - _PROBE_KEYS
        if extra:
            raise _err(
                source,
                who,
                sorted(map(str, extra))[0],
                "unknown key",
                f"probe keys are: {', '.join(sorted(_PROBE_KEYS))}",
            )
        for key in ("section", "messages", "checks"):
            if key not in item:
                raise _err(source, who, key, "missing")
        section = item["section"]
        if not isinstance(section, str) or not section.strip():
            raise _err(source, who, "section", f"expected a section name, got {section!r}")
        if known is not None:
            if section not in known and slugify(section) in known:
                section = slugify(section)
            if section not in known:
                raise _err(
                    source,
                    who,
                    "section",
                    f"unknown section {section!r}",
                    f"sections are: {', '.join(known)}",
                )
        messages = _messages(item["messages"], source, who)
        checks_raw = item["checks"]
        if not isinstance(checks_raw, dict):
            raise _err(source, who, "checks", "expected a mapping with must_match / must_not_match")
        extra = set(checks_raw) - _CHECK_KEYS
        if extra:
            raise _err(
                source,
                who,
                f"checks.{sorted(map(str, extra))[0]}",
                "unknown key",
                "use must_match and must_not_match",
            )
        must = _str_list(checks_raw.get("must_match", []), source, who, "checks.must_match")
        must_not = _str_list(
            checks_raw.get("must_not_match", []), source, who, "checks.must_not_match"
        )
        if not must and not must_not:
            raise _err(
                source,
                who,
                "checks",
                "no regexes",
                "a probe without checks always passes and tests nothing",
            )
        _validate_regexes(must, source, who, "checks.must_match")
        _validate_regexes(must_not, source, who, "checks.must_not_match")
        reference = item.get("reference")
        if reference is not None and (not isinstance(reference, str) or not reference.strip()):
            raise _err(source, who, "reference", "expected a non-empty string")
        probes.append(Probe(pid, section, messages, Checks(must, must_not), reference))
    return probes


def load_probes(path: Path | str, sections: Iterable[str] | None = None) -> list[Probe]:
    """Read, parse and validate a probe file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_PROBE_FILE_BYTES:
            raise InvalidInput(
                f"{p}: probe file larger than {MAX_PROBE_FILE_BYTES} bytes",
                "split it into smaller files",
            )
        raw = p.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"probe file not found: {p}", "check the --probes path") from exc
    except OSError as exc:
        raise InvalidInput(f"cannot read probe file {p}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{p}: not UTF-8 text (byte {exc.start})", "save the probes as UTF-8"
        ) from exc
    return parse_probes(safe_load_yaml(text, str(p)), str(p), sections)


def probes_by_section(probes: Iterable[Probe]) -> dict[str, list[Probe]]:
    out: dict[str, list[Probe]] = {}
    for p in probes:
        out.setdefault(p.section, []).append(p)
    return out
