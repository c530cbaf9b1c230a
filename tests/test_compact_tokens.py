"""Token counting: the approximate counter, tokenizer.json loading, the smollm2 resolver."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from persona.compact import ApproxCounter, CompactionConfig, Session, compact, resolve_tokenizer
from persona.compact.tokens import MESSAGE_OVERHEAD_TOKENS, message_tokens
from persona.errors import InvalidInput, NotFound

VOCAB = ["[UNK]", "hello", "world", "read", "the", "file"]


def _tokenizer_dir(path: Path, window: int | None = 2048) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    if window is not None:
        (path / "config.json").write_text(json.dumps({"max_position_embeddings": window}))
    return path


def test_approx_counts_chars_over_four_rounded_up() -> None:
    counter = ApproxCounter()
    assert counter.count(["", "a", "abcd", "abcde"]) == [0, 1, 1, 2]
    assert counter.approx is True and counter.context_window is None


def test_message_tokens_include_tool_calls_and_framing() -> None:
    message = {
        "role": "assistant",
        "content": "abcd",
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
        ],
    }
    # "abcd\nls{}" is 9 characters -> 3 tokens, plus the framing.
    assert message_tokens([message], ApproxCounter()) == [3 + MESSAGE_OVERHEAD_TOKENS]


def test_tokenizer_dir_gives_exact_counts_and_the_window(tmp_path: Path) -> None:
    directory = _tokenizer_dir(tmp_path / "tok")
    counter = resolve_tokenizer(str(directory))
    assert counter.approx is False
    assert counter.context_window == 2048
    assert counter.count(["hello world", "read the file please", ""]) == [2, 4, 0]


def test_tokenizer_json_file_and_missing_config(tmp_path: Path) -> None:
    directory = _tokenizer_dir(tmp_path / "tok", window=None)
    counter = resolve_tokenizer(str(directory / "tokenizer.json"))
    assert counter.context_window is None
    assert counter.count(["hello"]) == [1]


def test_exact_counts_flow_into_the_report(tmp_path: Path) -> None:
    counter = resolve_tokenizer(str(_tokenizer_dir(tmp_path / "tok")))
    session = Session(
        [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "hello"}]
    )
    _, stats = compact(session, CompactionConfig(), counter)
    assert stats.tokens_before == 2 + 1 + 2 * MESSAGE_OVERHEAD_TOKENS


def test_bad_tokenizer_specs(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="tokenizer not found"):
        resolve_tokenizer(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="no tokenizer.json"):
        resolve_tokenizer(str(tmp_path / "empty"))
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    with pytest.raises(InvalidInput, match="cannot load tokenizer"):
        resolve_tokenizer(str(junk))


def test_smollm2_resolves_through_tensorio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _tokenizer_dir(tmp_path / "smol", window=8192)
    stub = types.ModuleType("persona.tensorio.smollm2")
    stub.tokenizer_dir = lambda: directory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "persona.tensorio.smollm2", stub)
    counter = resolve_tokenizer("smollm2")
    assert counter.name == "smollm2" and counter.context_window == 8192


def test_smollm2_unavailable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "persona.tensorio.smollm2", None)
    with pytest.raises(NotFound, match="smollm2 tokenizer is not available"):
        resolve_tokenizer("smollm2")
    monkeypatch.setitem(
        sys.modules, "persona.tensorio.smollm2", types.ModuleType("persona.tensorio.smollm2")
    )
    with pytest.raises(NotFound, match="smollm2 tokenizer is not available"):
        resolve_tokenizer("smollm2")


EXAMPLE = (
    Path(__file__).resolve().parent.parent / "examples" / "sessions" / "hermes_debug_session.json"
)


@pytest.mark.slow
def test_real_smollm2_tokenizer_triggers_on_the_example() -> None:
    from persona.compact import check_bytes

    counter = resolve_tokenizer("smollm2")
    assert counter.approx is False and counter.context_window == 8192
    report = check_bytes(
        EXAMPLE.read_bytes(), source="example", config=CompactionConfig(), counter=counter
    )
    # The example is sized to sit just over the 60% trigger of SmolLM2's window.
    assert report.triggered is True
    assert report.usage_before is not None and 0.60 <= report.usage_before < 0.70
