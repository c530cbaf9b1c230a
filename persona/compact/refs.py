"""Find the strings compaction must never drop: file paths and URLs.

The preservation guarantee (seed 004: "file paths, URLs, tool names, and error
messages are never dropped") is enforced by one extractor shared by every rule:
whenever a rule removes text, it first lists the refs this module finds in that
text and carries the ones not already visible into its marker or summary line.
Tests then check the same guarantee from the outside: every ref found in the
input occurs, verbatim, somewhere in the output.

What counts as a ref is a deliberate, deterministic trade-off between keeping
too much (markers full of noise such as ``and/or``) and too little:

* URLs: ``scheme://...`` up to whitespace or a quote, minus trailing punctuation.
* Absolute, home and dot-relative paths: ``/etc/hosts``, ``~/x``, ``./a``, ``../b``.
* Windows paths: ``C:\\Users\\me\\file.txt``.
* Relative paths with two or more slashes (``a/b/c``) or whose last part has an
  extension (``src/app.py``); a single slash between plain words (``and/or``,
  ``TCP/IP``) is not a path.
* Bare file names with a well-known extension (``SOUL.md``, ``config.yaml``),
  and dot files (``.env``, ``.gitignore``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from typing import Any

# Extensions that make a bare word a file name. A closed list on purpose: an
# open "anything.with.dots" rule would treat "e.g" or "os.path" as files.
_EXTENSION_WORDS = (
    "md markdown txt rst adoc py pyi pyx ipynb js mjs cjs ts tsx jsx json jsonl json5 yaml "
    "yml toml ini cfg conf env properties sh bash zsh fish ps1 bat cmd rs go c h cc cpp cxx "
    "hpp hh cs java kt kts scala swift m mm rb php pl lua r jl dart ex exs erl hs ml clj sql "
    "graphql proto html htm css scss sass less vue svelte xml xsd csv tsv log lock gguf "
    "safetensors bin pt pth ckpt onnx npy npz pkl parquet arrow db sqlite sqlite3 pdf png jpg "
    "jpeg gif svg webp ico mp3 wav mp4 zip tar gz tgz bz2 xz zst 7z whl egg patch diff tf "
    "tfvars dockerfile mk cmake gradle sbt service socket timer pem crt key pub"
)
_EXTENSIONS = frozenset(_EXTENSION_WORDS.split())

_SEG = r"[\w.@+\-]+"
_BEFORE = r"(?<![\w.~/\\@+\-])"
_EXT = "|".join(sorted(_EXTENSIONS, key=lambda ext: (-len(ext), ext)))

# One lookbehind shared by every alternative: Python's re evaluates it once per
# position instead of once per alternative (the scan is the cost on big texts).
_REF_RE = re.compile(
    _BEFORE
    + "(?:"
    + "|".join(
        [
            # URL: a scheme, '://', then anything up to whitespace, quotes or brackets.
            r"(?P<url>[A-Za-z][A-Za-z0-9+.\-]*://[^\s<>\"'`\[\]{}|\\^]+)",
            # Windows drive path.
            rf"(?P<win>[A-Za-z]:\\{_SEG}(?:\\{_SEG})*)",
            # Absolute, home or dot-relative path.
            rf"(?P<abs>(?:~|\.{{1,2}})?/{_SEG}(?:/{_SEG})*/?)",
            # Relative path with two or more separators.
            rf"(?P<rel2>{_SEG}(?:/{_SEG}){{2,}}/?)",
            # Relative path with one separator whose last part has an extension.
            rf"(?P<rel1>{_SEG}/[\w@+\-][\w.@+\-]*\.[A-Za-z]\w*)",
            # Bare file name with a known extension
            # (not when followed by "(": "response.json()" is a method call).
            rf"(?P<file>[\w@+\-][\w.@+\-]*\.(?i:{_EXT})(?![\w@+\-/(]|\.\w))",
            # Dot file such as .env or .gitignore: at the start of a word only, so
            # the ".flatten" of "x.abs().flatten()" is not one.
            r"(?P<dot>(?<![^\s\"'`(\[{<=:,])\.[A-Za-z][\w\-]+(?:\.[\w\-]+)*(?![\w/(]))",
        ]
    )
    + ")"
)

# Sentence punctuation that ends up glued to the end of a ref.
_URL_TRAILING = ".,;:!?)'\""
_PATH_TRAILING = "."

# Every ref contains one of these; a word without them holds none.
_REF_CHARS = ("/", ".", "\\")


def find_refs(text: str) -> list[str]:
    """Return the paths and URLs in ``text``, deduplicated, in order of first appearance.

    No alternative of the regex matches across whitespace, and every
    look-around treats whitespace like the ends of the text, so the refs of a
    whitespace-separated word depend on that word alone. Scanning word by word
    (only words holding a ref character, each distinct word scanned once and
    cached) therefore finds exactly what one pass over the whole text would,
    several times faster on shell logs and file dumps, where the same paths
    recur.
    """
    if not text or not any(char in text for char in _REF_CHARS):
        return []
    seen: dict[str, None] = {}
    for word in dict.fromkeys(text.split()):
        if "/" in word or "." in word or "\\" in word:
            for ref in _word_refs(word):
                seen[ref] = None
    return list(seen)


@functools.lru_cache(maxsize=1 << 16)
def _word_refs(word: str) -> tuple[str, ...]:
    return tuple(scan_refs(word))


def clear_cache() -> None:
    """Forget the per-word cache (benchmarks measure a cold start with it)."""
    _word_refs.cache_clear()


def scan_refs(text: str) -> list[str]:
    """``find_refs`` the slow way: one regex pass over all of ``text``."""
    seen: dict[str, None] = {}
    for match in _REF_RE.finditer(text):
        kind = match.lastgroup
        ref = match.group()
        if kind == "url":
            ref = ref.rstrip(_URL_TRAILING)
            if ref.endswith("://") or "://" not in ref:
                continue
        else:
            stripped = ref.rstrip(_PATH_TRAILING)
            # Keep "../" or "./" forms intact; only strip sentence dots.
            if stripped and not stripped.endswith("/"):
                ref = stripped
        if ref and ref not in seen:
            seen[ref] = None
    return list(seen)


def _strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            out.append(str(key))
            _strings(item, out)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out)


def value_refs(value: Any) -> list[str]:
    """Refs in every string (keys included) of a decoded JSON value, in order."""
    strings: list[str] = []
    _strings(value, strings)
    # Newline-joined strings scan exactly like separate ones (see find_refs).
    return find_refs("\n".join(strings))


def content_refs(text: str, parsed: Any = None) -> list[str]:
    """Refs in a tool result: in its decoded strings when it is JSON, else in its text.

    Raw JSON hides refs behind escapes (``"a.py\\nb.py"`` is one word), so a
    JSON result is read the way the model's tools meant it. ``parsed`` is the
    decoded JSON when the caller already has it.
    """
    if parsed is not None:
        return value_refs(parsed)
    if text.lstrip()[:1] in ("{", "["):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict | list):
            return value_refs(obj)
    return find_refs(text)


def missing_refs(refs: Iterable[str], visible: str) -> list[str]:
    """The refs (in order, deduplicated) that ``visible`` does not already show as refs.

    A marker only needs to name what the remaining text does not already show;
    naming a path twice costs tokens and adds nothing. The comparison is ref to
    ref, not substring: ``src/a.py.orig`` on screen does not stand for ``src/a.py``.
    """
    refs = list(dict.fromkeys(refs))
    # Scanning ``visible`` for refs is only needed when a ref occurs in it at all.
    if not any(ref in visible for ref in refs):
        return refs
    shown = set(find_refs(visible))
    return [ref for ref in refs if ref not in shown]


def format_refs(refs: list[str]) -> str:
    """Space-separated refs: paths and URLs never contain spaces as we match them."""
    return " ".join(refs)
