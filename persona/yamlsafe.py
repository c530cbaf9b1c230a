"""YAML for untrusted files: safe types only, no aliases, bounded size.

``yaml.safe_load`` never runs code, but it still expands aliases, so a
"billion laughs" document of a few hundred bytes can take gigabytes. persona's
files (recipes, probes, configs) never need anchors, so any alias is refused
before anything is built, and so is nesting deeper than any of them needs (PyYAML's
time grows with the square of the depth, and its composer recurses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from persona.errors import InvalidInput, NotFound

MAX_BYTES = 4 << 20
MAX_DEPTH = 64


def load_text(text: str, source: str) -> Any:
    if len(text) > MAX_BYTES:
        raise InvalidInput(f"{source} is larger than {MAX_BYTES >> 20} MiB", "is this the right file?")
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise InvalidInput(f"{source} uses YAML aliases (line {event.start_mark.line + 1})",
                                   "write the values out; anchors and aliases are not allowed")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:  # PyYAML slows down quadratically with depth: stop early
                    raise InvalidInput(f"{source} is nested too deeply (line {event.start_mark.line + 1})",
                                       "flatten the YAML")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput(f"{source} is not valid YAML{where}: {problem}",
                           "fix the YAML syntax") from exc
    except RecursionError:
        raise InvalidInput(f"{source} is nested too deeply", "flatten the YAML") from None


def load_file(path: Path) -> Any:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise InvalidInput(f"{path} is larger than {MAX_BYTES >> 20} MiB", "is this the right file?")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFound(f"file not found: {path}", "check the path") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not UTF-8 text", "save it as UTF-8") from exc
    except IsADirectoryError as exc:
        raise InvalidInput(f"{path} is a directory", "give a YAML file") from exc
    return load_text(text, str(path))
