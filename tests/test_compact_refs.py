"""The path / URL extractor behind the preservation guarantee."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persona.compact.refs import content_refs, find_refs, missing_refs, scan_refs


@pytest.mark.parametrize(
    ("text", "refs"),
    [
        ("see config.yaml and SOUL.md.", ["config.yaml", "SOUL.md"]),
        ("open /etc/hosts, then ~/x/y and ./a and ../b", ["/etc/hosts", "~/x/y", "./a", "../b"]),
        ("src/app.py:12: error", ["src/app.py"]),
        ("visit https://example.com/a?b=1). done", ["https://example.com/a?b=1"]),
        ("C:\\Users\\me\\f.txt", ["C:\\Users\\me\\f.txt"]),
        ("cat .env; edit .github/workflows/ci.yml", [".env", ".github/workflows/ci.yml"]),
        (
            'File "/usr/lib/python3.11/json/decoder.py", line 3',
            ["/usr/lib/python3.11/json/decoder.py"],
        ),
        ("x=src/a.py", ["src/a.py"]),
        ("again src/a.py and src/a.py", ["src/a.py"]),
    ],
)
def test_finds_paths_and_urls(text: str, refs: list[str]) -> None:
    assert find_refs(text) == refs


@pytest.mark.parametrize(
    "text",
    [
        "and/or TCP/IP 1/2",
        "e.g. os.path json.loads response.json()",
        "x.abs().flatten().kthvalue(k).values",
        "version 1.2.3, pi is 3.14",
        "a:// nothing",
        "",
    ],
)
def test_ignores_things_that_are_not_paths(text: str) -> None:
    assert find_refs(text) == []


def test_content_refs_reads_json_strings() -> None:
    raw = '{"output": "a.py\\nb.py\\nC:\\\\x\\\\y.txt"}'
    assert content_refs(raw) == ["a.py", "b.py", "C:\\x\\y.txt"]
    assert content_refs("plain b.py") == ["b.py"]


def test_missing_refs_drops_visible_and_duplicates() -> None:
    assert missing_refs(["a.py", "b.py", "a.py", "c.md"], "we kept b.py") == ["a.py", "c.md"]
    # Ref to ref, not substring: a longer path on screen does not stand for a shorter one.
    assert missing_refs(["src/a.py", "b.py"], "kept src/a.py.orig and b.py") == ["src/a.py"]


PIECES = st.sampled_from(
    [
        "src/app.py",
        "/etc/hosts",
        "https://x.org/a",
        ".env",
        "(",
        ")",
        ".",
        "/",
        "\\",
        ":",
        "a",
        "md",
        "json",
        "~",
        '"',
        "=",
        ",",
    ]
)
WHITESPACE = st.sampled_from([" ", "\n", "\t", "  ", "\u00a0", "\u2003", "\x1c", "\u2028"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(PIECES, WHITESPACE, st.text(max_size=4)), max_size=60))
def test_word_by_word_scan_equals_one_pass(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert find_refs(text) == scan_refs(text)
