"""Prompt files -> sections: both formats, kinds, exact tiling, errors with line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persona.aer.sections import load_prompt, parse_prompt, render_without
from persona.errors import InvalidInput, NotFound

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "aer"

MARKDOWN = """# Soul

Intro text.

## Identity
Your name is Timmy.

## Core Values {kind=values}
Never share passwords.

## Voice
<!-- kind=behavior -->
Say ahoy.

### A subsection stays inside Voice
```
## not a heading: inside a code fence
```

## Weather lookups
Use the forecast tool.
"""


def test_markdown_sections_names_kinds_and_offsets() -> None:
    doc = parse_prompt(MARKDOWN, "soul.md")
    assert doc.format == "markdown"
    assert doc.names == ["preamble", "identity", "core-values", "voice", "weather-lookups"]
    kinds = {s.name: (s.kind, s.kind_source) for s in doc.sections}
    assert kinds == {
        "preamble": ("task", "default"),
        "identity": ("identity", "inferred"),
        "core-values": ("values", "explicit"),
        "voice": ("behaviour", "explicit"),
        "weather-lookups": ("task", "default"),
    }
    for s in doc.sections:
        assert MARKDOWN[s.start : s.end] == s.text
    assert "".join(s.text for s in doc.sections) == MARKDOWN
    voice = doc.section("voice")
    assert "## not a heading" in voice.text and "### A subsection" in voice.text
    assert doc.section("core-values").title == "Core Values"
    assert doc.section("identity").line == 5
    assert doc.alignment_names == ["identity", "core-values", "voice"]


def test_marker_sections_and_headings_are_plain_text_there() -> None:
    text = (
        "Preamble line\n"
        "<!-- kind=identity -->\n"
        "<!-- section: who kind=identity -->\n"
        "## Not a section in marker mode\n"
        "I am Timmy.\n"
        "<!-- section: rules kind=values -->\n"
        "No passwords.\n"
        "<!-- section: memory -->\n"
        "User likes tea.\n"
        "<!-- section: job kind=task -->\n"
        "Help with tea."
    )
    doc = parse_prompt(text)
    assert doc.format == "markers"
    assert doc.names == ["preamble", "who", "rules", "memory", "job"]
    assert [s.kind for s in doc.sections] == ["identity", "identity", "values", "memory", "task"]
    assert doc.section("preamble").kind_source == "explicit"
    assert doc.section("memory").kind_source == "inferred"
    assert "## Not a section" in doc.section("who").text
    assert "".join(s.text for s in doc.sections) == text


def test_render_without_is_byte_exact_for_kept_parts() -> None:
    text = "## A\r\nalpha  \r\n\r\n## B\nbeta\n## C\ngamma"  # CRLF and trailing spaces kept
    doc = parse_prompt(text)
    assert render_without(doc.sections, set()) == text
    assert doc.render_without({"b"}) == "## A\r\nalpha  \r\n\r\n## C\ngamma"
    assert doc.render_without({"a", "c"}) == "## B\nbeta\n"
    with pytest.raises(InvalidInput, match="unknown section"):
        doc.render_without({"nope"})


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(alphabet="abcXYZ 019", min_size=1, max_size=8).filter(lambda t: t.strip()),
            st.text(alphabet="hello\n \t#é✓", max_size=30),
        ),
        min_size=1,
        max_size=5,
        unique_by=lambda t: t[0].strip().lower(),
    ),
    st.text(alphabet="pre \n", max_size=10),
)
def test_sections_tile_the_file(parts: list[tuple[str, str]], pre: str) -> None:
    body = "".join(f"## {title}\n{content}\n" for title, content in parts)
    text = pre + body
    if not any(ch.isalnum() for title, _ in parts for ch in title):
        return
    try:
        doc = parse_prompt(text)
    except InvalidInput:
        return  # e.g. content lines that form duplicate headings
    assert "".join(s.text for s in doc.sections) == text
    for s in doc.sections:
        assert text[s.start : s.end] == s.text
        assert doc.render_without({s.name}) == text[: s.start] + text[s.end :]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r":1: prompt file is empty"),
        ("   \n\n", r":1: prompt file is empty"),
        ("just text, no sections\n", r":1: no sections found"),
        (
            "## Identity\na\n\n## identity\nb\n",
            r":4: duplicate section name 'identity' \(first at line 1\)",
        ),
        ("## Identity {kind=soul}\n", r":1: unknown section kind 'soul'"),
        ("## Identity\n\n<!-- kind=mood -->\n", r":3: unknown section kind 'mood'"),
        ("x\n<!-- section: a kind=wat -->\n", r":2: unknown section kind 'wat'"),
        ("<!-- section: -->\n", r":1: section marker has no name"),
        ("<!-- section: a colour=red -->\n", r":1: unexpected 'colour=red'"),
        ("<!-- section: a\n", r":1: malformed section marker"),
        ("<!-- section: a -->\n<!-- section: a -->\n", r":2: duplicate section name 'a'"),
        ("## ???\n", r":1: heading '## \?\?\?' has no name"),
        ("intro\n## Preamble\nx\n", r":2: duplicate section name 'preamble'"),
    ],
)
def test_parse_errors_name_the_line(text: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        parse_prompt(text, "p.md")


def test_load_prompt_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_prompt(tmp_path / "missing.md")
    bad = tmp_path / "bad.md"
    bad.write_bytes(b"## A\n\xff\xfe\n")
    with pytest.raises(InvalidInput, match="not UTF-8"):
        load_prompt(bad)
    with pytest.raises(NotFound, match="no section 'zzz'"):
        parse_prompt("## A\nx\n").section("zzz")


def test_example_prompt_has_three_alignment_sections_and_a_task() -> None:
    doc = load_prompt(EXAMPLES / "SOUL.md")
    kinds = {s.name: s.kind for s in doc.sections}
    assert all(s.kind_source == "explicit" for s in doc.sections if s.name != "preamble")
    assert kinds == {
        "preamble": "task",
        "identity": "identity",
        "style": "behaviour",
        "values": "values",
        "task": "task",
    }
