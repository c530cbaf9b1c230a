"""Split a system-prompt file into named, kinded sections.

AER needs to know which tokens of the system prompt are *alignment* (who the
model is, what it values, how it behaves, its tools and memories) and which are
the task at hand, and it needs to rebuild the prompt with some sections left
out. So a prompt is parsed into an ordered list of :class:`Section` objects that
tile the file exactly: ``"".join(s.text for s in sections) == file text``. That
invariant is what makes :func:`render_without` byte-exact for the kept parts
and lets token attribution map every character to exactly one section.

Two formats are accepted (one per file):

* Markdown: every ``## Heading`` line (level 2, outside code fences) starts a
  section that runs to the next one. The section's name is the heading
  slugified (``## Core Values`` -> ``core-values``). Its kind is, in order of
  precedence, a trailing ``{kind=values}`` on the heading line, an HTML comment
  ``<!-- kind=values -->`` on the first non-blank line under the heading, or
  inferred from well-known words in the name (see :data:`KIND_KEYWORDS`).
* Markers: a line ``<!-- section: name kind=identity -->`` starts a section
  that runs to the next marker. ``kind=`` is optional (inferred as above).
  When a file has any marker, headings are ordinary text.

A name with no well-known word gets kind ``task`` (``kind_source="default"``,
while ``## Task`` itself is ``inferred``):
unknown context is never silently counted as alignment, which would inflate
the very number AER is meant to shrink; reports show ``kind_source`` so the
user sees which kinds were guessed and can tag them.

Text before the first section is the ``preamble`` section, kind ``task``
unless it contains a ``<!-- kind=... -->`` line. The heading/marker line itself
belongs to its section, so dropping a section drops its heading too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from persona.errors import InvalidInput, NotFound

#: Kinds that count toward C_alignment.
ALIGNMENT_KINDS: frozenset[str] = frozenset({"identity", "values", "behaviour", "tools", "memory"})
#: Every accepted kind; ``task`` is context for the job at hand, never dropped.
KINDS: frozenset[str] = ALIGNMENT_KINDS | {"task"}
#: Spellings accepted in ``kind=`` and mapped to a canonical kind.
KIND_ALIASES: dict[str, str] = {"behavior": "behaviour", "style": "behaviour"}

#: Words in a section name that imply its kind when none is given. The first
#: word of the name that appears here wins (``tools-and-memory`` -> tools).
KIND_KEYWORDS: dict[str, str] = {
    "identity": "identity",
    "persona": "identity",
    "who": "identity",
    "name": "identity",
    "values": "values",
    "value": "values",
    "principles": "values",
    "rules": "values",
    "ethics": "values",
    "boundaries": "values",
    "safety": "values",
    "behaviour": "behaviour",
    "behavior": "behaviour",
    "style": "behaviour",
    "tone": "behaviour",
    "voice": "behaviour",
    "personality": "behaviour",
    "manner": "behaviour",
    "tools": "tools",
    "tool": "tools",
    "memory": "memory",
    "memories": "memory",
    "task": "task",
    "tasks": "task",
    "context": "task",
    "job": "task",
}

PREAMBLE = "preamble"

KindSource = Literal["explicit", "inferred", "default"]

_HEADING = re.compile(r"^ {0,3}##[ \t]+(?P<title>.*?)[ \t]*$")
_HEADING_KIND = re.compile(r"\{\s*kind\s*=\s*(?P<kind>[^}]*?)\s*\}\s*$")
_KIND_COMMENT = re.compile(r"^[ \t]*<!--\s*kind\s*=\s*(?P<kind>[^\s>]*)\s*-->[ \t]*$")
_MARKER_START = re.compile(r"^[ \t]*<!--\s*section\s*:", re.IGNORECASE)
_MARKER = re.compile(r"^[ \t]*<!--\s*section\s*:\s*(?P<body>.*?)\s*-->[ \t]*$", re.IGNORECASE)
_MARKER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


@dataclass(frozen=True)
class Section:
    """One named span of the prompt file.

    ``start``/``end`` are character offsets into the file text (``end``
    exclusive) and ``text == file_text[start:end]``. ``line`` is the 1-based
    line where the section starts, for error messages.
    """

    name: str
    kind: str
    text: str
    start: int
    end: int
    title: str = ""
    line: int = 1
    kind_source: KindSource = "default"

    @property
    def is_alignment(self) -> bool:
        return self.kind in ALIGNMENT_KINDS


@dataclass(frozen=True)
class PromptDoc:
    """A parsed prompt: the exact file text and the sections that tile it."""

    text: str
    sections: tuple[Section, ...]
    format: Literal["markdown", "markers"]
    source: str = "<prompt>"

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sections]

    def section(self, name: str) -> Section:
        """The section called ``name``: exactly, else by its slug in any case (``Identity``,
        ``## Identity`` and ``identity`` all name the section ``## Identity``)."""
        for s in self.sections:
            if s.name == name:
                return s
        key = slugify(name.lstrip("#").strip())
        matches = [s for s in self.sections if key and (s.name.lower() == key or slugify(s.title) == key)]
        if len(matches) == 1:
            return matches[0]
        raise NotFound(
            f"no section {name!r} in {self.source}",
            f"sections are: {', '.join(self.names)}",
        )

    @property
    def alignment_names(self) -> list[str]:
        return [s.name for s in self.sections if s.is_alignment]

    def render_without(self, drop: Iterable[str] = ()) -> str:
        """The prompt without the named sections (names resolved as :meth:`section` does)."""
        names = []
        for name in drop:
            try:
                names.append(self.section(name).name)
            except NotFound:
                names.append(name)  # render_without names every unknown one
        return render_without(self.sections, names)


def slugify(title: str) -> str:
    """Lower-case, runs of non-alphanumerics -> '-', trimmed: a stable section name."""
    return re.sub(r"[^0-9a-z]+", "-", title.lower()).strip("-")


def canonical_kind(kind: str, *, where: str, line: int) -> str:
    k = kind.strip().lower()
    k = KIND_ALIASES.get(k, k)
    if k not in KINDS:
        raise InvalidInput(
            f"{where}:{line}: unknown section kind {kind!r}",
            f"use one of: {', '.join(sorted(KINDS))} (behavior and style mean behaviour)",
        )
    return k


def infer_kind(name: str) -> tuple[str, KindSource]:
    """Kind implied by the first well-known word of a section name, else task."""
    for word in name.split("-"):
        if word in KIND_KEYWORDS:
            return KIND_KEYWORDS[word], "inferred"
    return "task", "default"


def _split_lines(text: str) -> list[str]:
    """Lines with their ``\n`` kept; only ``\n`` ends a line (unlike str.splitlines,
    which would also split on form feeds and U+2028 and so disagree with editors'
    line numbers)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def parse_prompt(text: str, source: str = "<prompt>") -> PromptDoc:
    """Parse prompt text into sections; see the module docstring for the formats."""
    if not text.strip():
        raise InvalidInput(
            f"{source}:1: prompt file is empty", "write the system prompt with ## sections"
        )
    lines = _split_lines(text)
    offsets = []
    pos = 0
    for ln in lines:
        offsets.append(pos)
        pos += len(ln)

    in_fence = False
    markers: list[int] = []  # line indexes of section markers
    headings: list[int] = []
    for i, raw in enumerate(lines):
        line = raw.rstrip("\r\n")
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if _MARKER_START.match(line):
            markers.append(i)
        elif _HEADING.match(line):
            headings.append(i)

    fmt: Literal["markdown", "markers"] = "markers" if markers else "markdown"
    starts = markers if markers else headings
    if not starts:
        raise InvalidInput(
            f"{source}:1: no sections found",
            "start each section with a '## Heading' line or a '<!-- section: name kind=identity -->' marker",
        )

    sections: list[Section] = []
    seen: dict[str, int] = {}

    def add(sec: Section) -> None:
        if sec.name in seen:
            raise InvalidInput(
                f"{source}:{sec.line}: duplicate section name {sec.name!r} (first at line {seen[sec.name]})",
                "give each section a distinct name",
            )
        seen[sec.name] = sec.line
        sections.append(sec)

    first = offsets[starts[0]]
    if first > 0:
        pre_text = text[:first]
        kind, ksrc = "task", "default"
        for j in range(starts[0]):
            m = _KIND_COMMENT.match(lines[j].rstrip("\r\n"))
            if m:
                kind, ksrc = canonical_kind(m["kind"], where=source, line=j + 1), "explicit"
                break
        add(Section(PREAMBLE, kind, pre_text, 0, first, "", 1, ksrc))

    for n, li in enumerate(starts):
        start = offsets[li]
        end = offsets[starts[n + 1]] if n + 1 < len(starts) else len(text)
        line = lines[li].rstrip("\r\n")
        lineno = li + 1
        if fmt == "markers":
            name, kind, ksrc = _parse_marker(line, source, lineno)
            title = name
        else:
            title, kind_text = _split_heading(line)
            name = slugify(title)
            if not name:
                raise InvalidInput(
                    f"{source}:{lineno}: heading {line.strip()!r} has no name",
                    "use letters or digits in section headings",
                )
            if kind_text is not None:
                kind, ksrc = canonical_kind(kind_text, where=source, line=lineno), "explicit"
            else:
                kind, ksrc = _kind_from_comment(
                    lines, li + 1, starts[n + 1] if n + 1 < len(starts) else len(lines), source
                )
                if kind is None:
                    kind, ksrc = infer_kind(name)
        add(Section(name, kind, text[start:end], start, end, title, lineno, ksrc))

    assert "".join(s.text for s in sections) == text
    return PromptDoc(text, tuple(sections), fmt, source)


def _split_heading(line: str) -> tuple[str, str | None]:
    m = _HEADING.match(line)
    assert m is not None
    title = m["title"]
    kind = None
    km = _HEADING_KIND.search(title)
    if km:
        kind = km["kind"]
        title = title[: km.start()].rstrip()
    title = re.sub(r"[ \t]+#+$", "", title).strip()  # optional closing #'s
    return title, kind


def _kind_from_comment(
    lines: Sequence[str], lo: int, hi: int, source: str
) -> tuple[str | None, KindSource]:
    """A ``<!-- kind=x -->`` on the first non-blank line under a heading."""
    for j in range(lo, hi):
        stripped = lines[j].strip()
        if not stripped:
            continue
        m = _KIND_COMMENT.match(lines[j].rstrip("\r\n"))
        if m:
            return canonical_kind(m["kind"], where=source, line=j + 1), "explicit"
        return None, "default"
    return None, "default"


def _parse_marker(line: str, source: str, lineno: int) -> tuple[str, str, KindSource]:
    m = _MARKER.match(line)
    hint = "write markers as <!-- section: name kind=identity --> on a line of their own"
    if not m:
        raise InvalidInput(f"{source}:{lineno}: malformed section marker {line.strip()!r}", hint)
    parts = m["body"].split()
    if not parts or "=" in parts[0]:
        raise InvalidInput(f"{source}:{lineno}: section marker has no name", hint)
    name = parts[0]
    if not _MARKER_NAME.match(name):
        raise InvalidInput(
            f"{source}:{lineno}: bad section name {name!r}",
            "names use letters, digits, '-', '_' and '.'",
        )
    kind: str | None = None
    for attr in parts[1:]:
        key, eq, value = attr.partition("=")
        if not eq or key.lower() != "kind" or kind is not None:
            raise InvalidInput(f"{source}:{lineno}: unexpected {attr!r} in section marker", hint)
        kind = canonical_kind(value, where=source, line=lineno)
    if kind is not None:
        return name, kind, "explicit"
    inferred, ksrc = infer_kind(slugify(name))
    return name, inferred, ksrc


def load_prompt(path: Path | str) -> PromptDoc:
    """Read and parse a prompt file (UTF-8); newlines are kept as written."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"prompt file not found: {p}", "check the --prompt path") from exc
    except OSError as exc:
        raise InvalidInput(f"cannot read prompt file {p}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{p}: not UTF-8 text (byte {exc.start})", "save the prompt as UTF-8"
        ) from exc
    return parse_prompt(text, str(p))


def render_without(sections: Sequence[Section], drop: Iterable[str] = ()) -> str:
    """The prompt with the named sections removed; kept sections are byte-exact.

    Unknown names are an error rather than a no-op, so a typo in a drop list
    cannot make a measurement silently keep the section it meant to remove.
    """
    drop_set = set(drop)
    known = {s.name for s in sections}
    unknown = sorted(drop_set - known)
    if unknown:
        raise InvalidInput(
            f"unknown section(s) to drop: {', '.join(unknown)}",
            f"sections are: {', '.join(s.name for s in sections)}",
        )
    return "".join(s.text for s in sections if s.name not in drop_set)
