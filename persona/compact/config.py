"""The compaction config: seed 004's YAML keys, their defaults, and strict checks.

The file looks like the seed's::

    compaction:
      enabled: true
      trigger_threshold: 0.60      # fire at 60% of the context window
      protect_last_n_turns: 5      # never touch recent turns (rule 6)
      max_tool_output_chars: 500   # rule 2; null turns truncation off
      keep_tool_summary: true      # rule 1; false turns collapsing off
      drop_system_after_turn: 1    # rule 3; null turns it off, 0 drops every system message
      collapse_consecutive_assistant: true   # rule 4

and persona adds four keys for its heuristics (all optional)::

      head_lines: 10               # rule 2 keeps the first 10 lines ...
      tail_lines: 5                # ... and the last 5
      error_prefixes: [error, traceback, ...]   # a tool result starting with one failed
      error_patterns: ['(?m)^exit code:? [1-9]', ...]  # a tool result matching one failed

(prefixes and patterns are matched against the lower-cased tool output, so
write them in lower case; see outcome.py).

Why ``keep_tool_summary: false`` switches rule 1 off rather than dropping pairs
without a trace: a pair removed with no summary would lose its tool name, which
the preservation guarantee forbids. ``enabled: false`` stops automatic
triggering; an explicit ``--force`` still compacts (a manual run is intent).

Every mistake is an ``InvalidInput`` that names the key: an unknown key (most
likely a typo that would otherwise be silently ignored), a wrong type (YAML's
``yes``/``1`` are not accepted for booleans, nor booleans for numbers) or a
value out of range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from persona.errors import InvalidInput, NotFound

DEFAULT_ERROR_PREFIXES: tuple[str, ...] = (
    "error",
    "traceback",
    "exception",
    "fatal",
    "failed",
    "failure",
    "panic",
    "denied",
    "command not found",
)

# Matched against the lower-cased tool output (see outcome.py), hence no (?i).
DEFAULT_ERROR_PATTERNS: tuple[str, ...] = (
    # "exit code: 2", "Exit status 127", "returncode=1" at the start of a line.
    r"(?m)^\W*(?:exit[ _]code|exit[ _]status|return[ _]?code)\W{0,3}-?[1-9][0-9]*\b",
    r"(?m)^traceback \(most recent call last\):",
    "command not found",
    "no such file or directory",
    "permission denied",
)


@dataclass(frozen=True)
class CompactionConfig:
    """Validated compaction settings; see the module docstring for each key."""

    enabled: bool = True
    trigger_threshold: float = 0.60
    protect_last_n_turns: int = 5
    max_tool_output_chars: int | None = 500
    keep_tool_summary: bool = True
    drop_system_after_turn: int | None = 1
    collapse_consecutive_assistant: bool = True
    head_lines: int = 10
    tail_lines: int = 5
    error_prefixes: tuple[str, ...] = DEFAULT_ERROR_PREFIXES
    error_patterns: tuple[str, ...] = DEFAULT_ERROR_PATTERNS
    compiled_patterns: tuple[re.Pattern[str], ...] = field(
        default=(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        compiled = []
        for pattern in self.error_patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise InvalidInput(
                    f"compaction.error_patterns: {pattern!r} is not a valid regular expression ({exc})",
                    "fix the pattern (Python re syntax)",
                ) from exc
        object.__setattr__(self, "compiled_patterns", tuple(compiled))
        object.__setattr__(
            self, "error_prefixes", tuple(prefix.lower() for prefix in self.error_prefixes)
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data, for reports."""
        out: dict[str, Any] = {}
        for item in fields(self):
            if item.name == "compiled_patterns":
                continue
            value = getattr(self, item.name)
            out[item.name] = list(value) if isinstance(value, tuple) else value
        return out


_HINT = "see examples/compaction.yaml for every key and its default"


def _check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"compaction.{key} must be true or false, not {value!r}", _HINT)
    return value


def _check_int(key: str, value: Any, *, minimum: int, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an integer or null" if nullable else "an integer"
        raise InvalidInput(f"compaction.{key} must be {kind}, not {value!r}", _HINT)
    if value < minimum:
        raise InvalidInput(f"compaction.{key} must be at least {minimum}, not {value}", _HINT)
    return value


def _check_threshold(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"compaction.{key} must be a number, not {value!r}", _HINT)
    if not 0 < value <= 1:
        raise InvalidInput(
            f"compaction.{key} must be in (0, 1] (a share of the context window), not {value}",
            _HINT,
        )
    return float(value)


def _check_strings(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InvalidInput(f"compaction.{key} must be a list of non-empty strings", _HINT)
    return tuple(value)


_CHECKS: dict[str, Any] = {
    "enabled": _check_bool,
    "trigger_threshold": _check_threshold,
    "protect_last_n_turns": lambda k, v: _check_int(k, v, minimum=0),
    "max_tool_output_chars": lambda k, v: _check_int(k, v, minimum=1, nullable=True),
    "keep_tool_summary": _check_bool,
    "drop_system_after_turn": lambda k, v: _check_int(k, v, minimum=0, nullable=True),
    "collapse_consecutive_assistant": _check_bool,
    "head_lines": lambda k, v: _check_int(k, v, minimum=0),
    "tail_lines": lambda k, v: _check_int(k, v, minimum=0),
    "error_prefixes": _check_strings,
    "error_patterns": _check_strings,
}


def config_from_mapping(data: Any) -> CompactionConfig:
    """Validate a parsed YAML document (``{"compaction": {...}}``) into a config."""
    if data is None:
        return CompactionConfig()
    if not isinstance(data, dict):
        raise InvalidInput(
            "the compaction config must be a mapping with a 'compaction:' key", _HINT
        )
    unknown_top = sorted(str(key) for key in data if key != "compaction")
    if unknown_top:
        raise InvalidInput(f"unknown top-level key in compaction config: {unknown_top[0]}", _HINT)
    section = data.get("compaction")
    if section is None:
        return CompactionConfig()
    if not isinstance(section, dict):
        raise InvalidInput("compaction: must be a mapping of settings", _HINT)
    values: dict[str, Any] = {}
    for key, value in section.items():
        check = _CHECKS.get(key) if isinstance(key, str) else None
        if check is None:
            raise InvalidInput(f"unknown key in compaction config: compaction.{key}", _HINT)
        values[key] = check(key, value)
    return CompactionConfig(**values)


def load_config(path: Path | None) -> CompactionConfig:
    """Read a compaction YAML file; ``None`` gives the seed's defaults."""
    if path is None:
        return CompactionConfig()
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFound(f"compaction config not found: {path}", "check the --config path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read compaction config {path}: {exc}", _HINT) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"compaction config {path} is not valid YAML: {exc}", _HINT) from exc
    return config_from_mapping(data)
