"""Training data: validation with line numbers, sessions, and assistant-only labels checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona.errors import InvalidInput, NotFound
from persona.train.data import (
    IGNORE,
    Example,
    encode,
    encode_all,
    load_chat_data,
    parse_session,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


def _labelled_text(tokenizer, example: Example, max_length: int = 512) -> tuple[str, str]:
    """(text of the labelled tokens, text of the others), read back through the offsets."""
    enc = encode(tokenizer, example, max_length)
    text = tokenizer.apply_chat_template(list(example.messages), tokenize=False)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    kept = "".join(text[a:b] for (a, b), label in zip(offsets, enc.labels, strict=False) if label != IGNORE)
    rest = "".join(text[a:b] for (a, b), label in zip(offsets, enc.labels, strict=False) if label == IGNORE)
    assert all(label in (IGNORE, tid) for label, tid in zip(enc.labels, enc.input_ids, strict=True))
    return kept, rest


# -- validation ------------------------------------------------------------------------

def test_jsonl_loads_and_hashes_the_bytes(tmp_path):
    import hashlib

    path = _write(tmp_path / "d.jsonl", [_chat(("user", "hi"), ("assistant", "hello")), "",
                                         _chat(("system", "be kind"), ("user", "a"), ("assistant", "b"))])
    data = load_chat_data(path)
    assert [e.source for e in data.examples] == [f"{path}:1", f"{path}:3"]
    assert data.examples[1].messages[0] == {"role": "system", "content": "be kind"}
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("line", "expected"), [
    ('{"messages": [', "not valid JSON"),
    (json.dumps({"messages": [{"role": "narrator", "content": "x"}]}), "unknown role 'narrator'"),
    (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}), "no assistant message"),
    (json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}),
     "content must be a string"),
    (json.dumps({"text": "no messages"}), "'messages' array"),
    (json.dumps({"messages": []}), "'messages' is empty"),
    ("NaN", "not valid JSON"),
])
def test_bad_jsonl_line_is_named(tmp_path, line, expected):
    path = _write(tmp_path / "d.jsonl", [_chat(("user", "hi"), ("assistant", "hello")), line])
    with pytest.raises(InvalidInput) as info:
        load_chat_data(path)
    assert f"{path}:2" in info.value.message and expected in info.value.message
    assert info.value.hint


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InvalidInput, match="no examples"):
        load_chat_data(empty)
    with pytest.raises(NotFound, match="not found"):
        load_chat_data(tmp_path / "nope.jsonl")
    (tmp_path / "sub").mkdir()
    with pytest.raises(InvalidInput, match="no .jsonl or .json files"):
        load_chat_data(tmp_path / "sub")
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"messages": []}\n\xff\n')
    with pytest.raises(InvalidInput, match=r"latin1.jsonl:2: not UTF-8"):
        load_chat_data(bad)


def test_prompts_file(tmp_path):
    from persona.train.prompt_pool import load_user_prompts

    path = _write(tmp_path / "q.txt", ["What is your name?", "", "  Who are you?  "])
    prompts, sha = load_user_prompts(path)
    assert [(p.id, p.user_text) for p in prompts] == [(f"{path}:1", "What is your name?"),
                                                      (f"{path}:3", "Who are you?")] and len(sha) == 64
    with pytest.raises(InvalidInput, match="no prompts"):
        load_user_prompts(_write(tmp_path / "e.txt", [" "]))
    with pytest.raises(NotFound):
        load_user_prompts(tmp_path / "missing.txt")


# -- sessions --------------------------------------------------------------------------

def test_hermes_session_keeps_user_and_assistant_text():
    example = load_chat_data(EXAMPLES / "sessions" / "hermes_debug_session.json").examples[0]
    roles = [m["role"] for m in example.messages]
    assert set(roles) == {"user", "assistant"}
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False))  # tool traffic gone, turns joined
    raw = json.loads((EXAMPLES / "sessions" / "hermes_debug_session.json").read_text())["messages"]
    first_user = next(m["content"] for m in raw if m["role"] == "user")
    assert example.messages[0] == {"role": "user", "content": first_user}


def test_session_directory_and_array(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([
        {"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                              "function": {"name": "ls", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "1", "content": "file.txt"},
        {"role": "assistant", "content": [{"type": "text", "text": "There is file.txt."}]},
    ]))
    (tmp_path / "b.jsonl").write_text(_chat(("user", "hi"), ("assistant", "hello")) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    data = load_chat_data(tmp_path)
    assert [e.source for e in data.examples] == [str(tmp_path / "a.json"), f"{tmp_path / 'b.jsonl'}:1"]
    assert data.examples[0].messages == ({"role": "user", "content": "q"},
                                         {"role": "assistant", "content": "There is file.txt."})


@pytest.mark.parametrize(("body", "expected"), [
    ([{"role": "wizard", "content": "x"}], "message 0: unknown role 'wizard'"),
    ([{"role": "user", "content": "x"}], "no assistant text"),
    ({"session_id": "s"}, "not a session"),
    ([{"role": "user", "content": 5}], "message 0: content must be"),
])
def test_bad_sessions(body, expected):
    with pytest.raises(InvalidInput) as info:
        parse_session(json.dumps(body), "s.json")
    assert expected in info.value.message and info.value.message.startswith("s.json")


# -- labels ----------------------------------------------------------------------------

def test_only_assistant_tokens_carry_labels(tokenizer):
    example = Example(({"role": "system", "content": "You listen."},
                       {"role": "user", "content": "I had a rough day."},
                       {"role": "assistant", "content": "That sounds hard. What happened?"},
                       {"role": "user", "content": "Work."},
                       {"role": "assistant", "content": "Thank you for sharing that with me."}), "t:1")
    kept, rest = _labelled_text(tokenizer, example)
    # By hand: each assistant reply plus the template's end-of-turn, nothing else.
    assert kept == ("That sounds hard. What happened?<|im_end|>\n"
                    "Thank you for sharing that with me.<|im_end|>\n")
    assert rest == ("<|im_start|>system\nYou listen.<|im_end|>\n<|im_start|>user\nI had a rough day.<|im_end|>\n"
                    "<|im_start|>assistant\n<|im_start|>user\nWork.<|im_end|>\n<|im_start|>assistant\n")


def test_open_end_stops_before_the_end_of_turn(tokenizer):
    example = Example(({"role": "user", "content": "Who are you?"},
                       {"role": "assistant", "content": "I am a helpful"}), "t:1", open_end=True)
    kept, _ = _labelled_text(tokenizer, example)
    assert kept == "I am a helpful"


def test_template_that_rewrites_turns_falls_back_to_the_content(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    # Prefix renders differ from the full render (the turn count leads), so spans come from the content.
    tok.chat_template = ("{{ messages|length }} turns\n{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                         "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    example = Example(({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}), "t:1")
    kept, _ = _labelled_text(tok, example)
    assert kept == "hello there"


def test_truncation(tokenizer):
    example = Example(({"role": "user", "content": "Hello! How can I help you today? " * 4},
                       {"role": "assistant", "content": "I am here to listen."}), "d.jsonl:7")
    full = encode(tokenizer, example, 512)
    assert not full.truncated and full.targets > 0
    cut = encode(tokenizer, example, len(full.input_ids) - 2)
    assert cut.truncated and cut.targets == full.targets - 2
    with pytest.raises(InvalidInput, match=r"d.jsonl:7: no assistant tokens within --max-length 8"):
        encode(tokenizer, example, 8)
    with pytest.raises(InvalidInput, match="--max-length must be at least 2"):
        encode_all(tokenizer, [example], 1)


def test_template_errors_name_the_line(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    example = Example(({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}), "d.jsonl:4")
    with pytest.raises(InvalidInput, match=r"d.jsonl:4: the chat template cannot render.*alternate"):
        encode(tok, example, 64)


def test_the_examples_load():
    from persona.aer.probes import load_probes
    from persona.aer.sections import load_prompt

    data = load_chat_data(EXAMPLES / "train" / "listening.jsonl")
    assert len(data.examples) == 20
    soul = load_prompt(EXAMPLES / "aer" / "SOUL.md")
    assert len(load_probes(EXAMPLES / "aer" / "probes.yaml", soul.names)) >= 36
    assert len(load_probes(EXAMPLES / "train" / "listening_probes.yaml")) == 3
