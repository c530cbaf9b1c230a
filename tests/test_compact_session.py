"""Parsing, validation (errors naming the message index) and serialisation of sessions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from persona.compact import CompactionConfig, Session, compact, dump_session, parse_session
from persona.errors import InvalidInput, PersonaError


def _call(call_id: str, name: str = "ls") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def _bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_bare_array_round_trips() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    session = parse_session(_bytes(messages))
    assert session == Session(messages)
    assert json.loads(dump_session(session)) == messages


def test_hermes_wrapper_keeps_every_other_key_in_order() -> None:
    obj = {
        "session_id": "s1",
        "model": "hermes",
        "messages": [{"role": "user", "content": "hi"}],
        "message_count": 1,
        "tools": [{"type": "function"}],
    }
    session = parse_session(_bytes(obj))
    assert session.wrapper is not None
    out = session.with_messages(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    )
    dumped = json.loads(dump_session(out))
    assert list(dumped) == list(obj)
    assert {k: v for k, v in dumped.items() if k != "messages"} == {
        k: v for k, v in obj.items() if k != "messages"
    }


def test_dump_is_deterministic_and_utf8() -> None:
    session = parse_session(_bytes([{"role": "user", "content": "café ☕"}]))
    assert dump_session(session) == dump_session(session)
    assert "café ☕".encode() in dump_session(session)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'"a string"', "not a message array"),
        (b'{"session_id": "x"}', "without a 'messages' array"),
        (b"[1]", "message 0: not an object"),
        (b'[{"content": "x"}]', "message 0: has no 'role'"),
        (
            b'[{"role": "user", "content": "a"}, {"role": "robot", "content": "x"}]',
            "message 1: unknown role 'robot'",
        ),
        (b'[{"role": "user", "content": 5}]', "message 0: content must be"),
        (b'[{"role": "user", "content": NaN}]', "not valid JSON"),
    ],
)
def test_bad_input_is_a_clear_error(payload: bytes, needle: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_session(payload, "s.json")
    assert needle in str(info.value)
    assert str(info.value).startswith("s.json: ")
    assert info.value.hint


def test_tool_response_without_a_call() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "tool", "tool_call_id": "ghost", "content": "x"},
    ]
    with pytest.raises(InvalidInput, match="message 1: tool response with no call"):
        parse_session(_bytes(messages))


def test_tool_response_before_its_call_is_a_cycle() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [_call("a")]},
        {"role": "tool", "tool_call_id": "b", "content": "x"},
        {"role": "tool", "tool_call_id": "a", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [_call("b")]},
        {"role": "tool", "tool_call_id": "b", "content": "x"},
    ]
    with pytest.raises(InvalidInput, match=r"message 2: .*made later by message 4.*cycle"):
        parse_session(_bytes(messages))


def test_duplicate_tool_call_ids() -> None:
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [_call("a")]},
        {"role": "tool", "tool_call_id": "a", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [_call("a")]},
        {"role": "tool", "tool_call_id": "a", "content": "x"},
    ]
    with pytest.raises(
        InvalidInput, match="message 2: tool call id 'a' is already used by message 0"
    ):
        parse_session(_bytes(messages))


def test_second_response_to_one_call() -> None:
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [_call("a")]},
        {"role": "tool", "tool_call_id": "a", "content": "x"},
        {"role": "tool", "tool_call_id": "a", "content": "y"},
    ]
    with pytest.raises(InvalidInput, match="message 2: second tool response to call 'a'"):
        parse_session(_bytes(messages))


def test_call_without_response() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [_call("a"), _call("b")]},
        {"role": "tool", "tool_call_id": "a", "content": "x"},
        {"role": "user", "content": "and?"},
    ]
    with pytest.raises(InvalidInput, match="message 1: tool call 'b' has no tool response"):
        parse_session(_bytes(messages))


def test_response_separated_from_its_call() -> None:
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [_call("a")]},
        {"role": "tool", "tool_call_id": "a", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [_call("b")]},
        {"role": "tool", "tool_call_id": "b", "content": "x"},
        {"role": "user", "content": "hm"},
        {"role": "tool", "tool_call_id": "a", "content": "again"},
    ]
    with pytest.raises(InvalidInput, match="message 5: second tool response"):
        parse_session(_bytes(messages))


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        ("oops", "tool_calls[0] is not an object"),
        ({"type": "function", "function": {"name": "x"}}, "tool_calls[0] has no id"),
        ({"id": "a", "type": "function"}, "has no 'function' object"),
        ({"id": "a", "function": {"arguments": "{}"}}, "has no function name"),
        ({"id": "a", "function": {"name": "x", "arguments": 5}}, "arguments must be"),
    ],
)
def test_malformed_tool_calls(call: Any, needle: str) -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    with pytest.raises(InvalidInput) as info:
        parse_session(_bytes(messages))
    assert "message 1: " in str(info.value) and needle in str(info.value)


def test_errors_are_persona_errors_with_nonzero_exit_code() -> None:
    with pytest.raises(PersonaError) as info:
        parse_session(b"[")
    assert info.value.exit_code != 0


def test_compact_validates_a_session_built_by_hand() -> None:
    with pytest.raises(InvalidInput, match="message 0: tool response with no call"):
        compact(Session([{"role": "tool", "tool_call_id": "x", "content": ""}]), CompactionConfig())
