"""The guarantees, on the example session and on random sessions (hypothesis).

Checked from the outside, on input and output messages only:

* the output is a valid session: every tool call answered, no orphan response;
* user messages are byte-identical and in order (rule 5);
* the protected tail (rule 6) is byte-identical;
* every path and URL of the input, every tool name, and every error line of a
  failed tool result occurs in the output;
* compacting is deterministic and idempotent; it never adds messages.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona.compact import (
    CompactionConfig,
    Session,
    compact,
    dump_session,
    parse_session,
    validate_messages,
)
from persona.compact.content import content_text
from persona.compact.outcome import error_lines, json_object, tool_failed
from persona.compact.refs import content_refs, find_refs, value_refs
from persona.compact.turns import protected_start, turn_numbers

EXAMPLE = (
    Path(__file__).resolve().parent.parent / "examples" / "sessions" / "hermes_debug_session.json"
)

Message = dict[str, Any]


# -- what the output must keep ---------------------------------------------------------


def _arguments(call: dict[str, Any]) -> Any:
    arguments = call["function"].get("arguments")
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _decoded_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in (key, *_decoded_strings(item))]
    if isinstance(value, list):
        return [s for item in value for s in _decoded_strings(item)]
    return []


def visible_text(messages: list[Message]) -> str:
    """Everything a reader of the output sees: raw text and decoded JSON strings."""
    parts: list[str] = []
    for message in messages:
        text = content_text(message.get("content"))
        parts.append(text)
        with contextlib.suppress(ValueError):
            parts.extend(_decoded_strings(json.loads(text)))
        for call in message.get("tool_calls") or []:
            parts.append(call["function"]["name"])
            parts.append(str(call["function"].get("arguments")))
            parts.extend(_decoded_strings(_arguments(call)))
    return "\n".join(parts)


def _failed_error_lines(message: Message, config: CompactionConfig) -> list[str] | None:
    """The error lines of a failed tool result; None when it did not fail."""
    text = content_text(message.get("content"))
    parsed = json_object(text)
    if not tool_failed(message, text, config, parsed):
        return None
    out = []
    for string in _decoded_strings(parsed) if parsed is not None else [text]:
        lines = string.split("\n")
        out.extend(
            line for line, flag in zip(lines, error_lines(lines, config), strict=True) if flag
        )
    return out


def must_keep(messages: list[Message], config: CompactionConfig) -> list[str]:
    """Refs, tool names and failed-call error lines of ``messages``."""
    keep: list[str] = []
    for message in messages:
        text = content_text(message.get("content"))
        if message["role"] == "tool":
            keep.extend(content_refs(text))
            keep.extend(_failed_error_lines(message, config) or [])
        else:
            keep.extend(find_refs(text))
        for call in message.get("tool_calls") or []:
            keep.append(call["function"]["name"])
            keep.extend(value_refs(_arguments(call)))
    return keep


def check_guarantees(before: list[Message], config: CompactionConfig) -> list[Message]:
    out_session, stats = compact(Session(before), config)
    after = out_session.messages
    validate_messages(after)
    assert len(after) <= len(before)
    assert stats.messages_after == len(after)
    assert [json.dumps(m) for m in after if m["role"] == "user"] == [
        json.dumps(m) for m in before if m["role"] == "user"
    ]
    start = protected_start(before, turn_numbers(before), config.protect_last_n_turns)
    tail = len(before) - start
    if tail:
        assert [json.dumps(m) for m in after[-tail:]] == [json.dumps(m) for m in before[start:]]
    seen = visible_text(after)
    missing = [item for item in must_keep(before, config) if item not in seen]
    assert not missing, missing
    # A failed call is never collapsed, and its own result keeps its error lines.
    results = {m["tool_call_id"]: m for m in after if m["role"] == "tool"}
    for message in before:
        if message["role"] == "tool" and _failed_error_lines(message, config) is not None:
            assert message["tool_call_id"] in results
            kept = visible_text([results[message["tool_call_id"]]])
            lost = [line for line in _failed_error_lines(message, config) or [] if line not in kept]
            assert not lost, lost
    again, _ = compact(out_session, config)
    assert dump_session(again) == dump_session(out_session), "compaction is not idempotent"
    twice, _ = compact(Session(before), config)
    assert dump_session(twice) == dump_session(out_session), "compaction is not deterministic"
    return after


# -- the example session --------------------------------------------------------------------


def test_example_session_keeps_every_guarantee() -> None:
    session = parse_session(EXAMPLE.read_bytes())
    for protect in (0, 2, 5):
        config = CompactionConfig(protect_last_n_turns=protect)
        after = check_guarantees(session.messages, config)
        assert len(after) < len(session.messages)


def test_example_session_concrete_survivors() -> None:
    session = parse_session(EXAMPLE.read_bytes())
    out, stats = compact(session, CompactionConfig(protect_last_n_turns=2))
    text = visible_text(out.messages)
    for needle in [
        "persona/merge/ties.py",
        "https://docs.python.org/3/library/json.html",
        "https://www.rfc-editor.org/rfc/rfc8259",
        "skills/python-debugging/SKILL.md",
        "config/merge.yaml",
        "Error: [Errno 2] No such file or directory: 'config/merge.yaml'",
        "E       AssertionError: assert tensor(0.) == -1.0",
        "read_file",
        "terminal",
        "fetch_url",
        "patch",
    ]:
        assert needle in text, needle
    assert stats.tokens_after < stats.tokens_before
    assert out.wrapper is not None and out.wrapper["session_id"] == "20260327_101500_ab12cd"


# -- random sessions --------------------------------------------------------------------------

PATHS = [
    "src/app.py",
    "/etc/hosts",
    "~/notes/todo.md",
    "./run.sh",
    "config.yaml",
    "SOUL.md",
    ".env",
    "a/b/c",
    "C:\\Users\\me\\x.txt",
    "https://example.org/a?b=1",
    "http://localhost:8080/api",
]
ERRORS = [
    "Error: disk full",
    "Traceback (most recent call last):",
    "ValueError: bad value",
    "exit code: 2",
]
WORDS = [
    "the",
    "merge",
    "ok",
    "done",
    "tensor",
    "step",
    "(x)",
    "[tool: y]",
    "e.g.",
    "and/or",
    "→",
    "日本",
]
TOOLS = ["read_file", "terminal", "search_files", "patch", "fetch_url"]

# Fresh paths, URLs and errors make the "occurs in the output" checks sharp:
# a fixed pool would often be found elsewhere in the output by chance.
fresh_path = st.from_regex(
    r"(~/|/|\./)?[a-z]{1,6}(/[a-z]{1,6}){0,2}\.(py|md|yaml|json)", fullmatch=True
)
fresh_url = st.from_regex(r"https://[a-z]{1,8}\.org/[a-z0-9]{1,8}", fullmatch=True)
fresh_error = st.from_regex(
    r"(Error: [a-z]{3,10}|[A-Z][a-z]{2,6}Error: [a-z ]{1,12}|exit code: [1-9])", fullmatch=True
)
word = st.one_of(
    st.sampled_from(PATHS), fresh_path, fresh_url, st.sampled_from(WORDS), st.text(max_size=8)
)
line = st.lists(word, max_size=8).map(" ".join)
text = st.lists(st.one_of(line, st.sampled_from(ERRORS), fresh_error), max_size=30).map("\n".join)


@st.composite
def tool_result(draw: st.DrawFn) -> tuple[str, bool]:
    body = draw(text)
    kind = draw(st.sampled_from(["plain", "json_ok", "json_fail", "error_prefix", "long_line"]))
    if kind == "json_ok":
        return json.dumps({"output": body, "exit_code": 0, "error": None}), False
    if kind == "json_fail":
        return json.dumps({"output": body, "exit_code": draw(st.integers(1, 3))}), True
    if kind == "error_prefix":
        return "Error: " + body, True
    if kind == "long_line":
        return body.replace("\n", " ") * draw(st.integers(1, 5)), False
    return body, False


@st.composite
def sessions(draw: st.DrawFn) -> list[Message]:
    messages: list[Message] = []
    counter = 0
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(text)})
    for _ in range(draw(st.integers(0, 6))):
        messages.append({"role": "user", "content": draw(text)})
        for _ in range(draw(st.integers(0, 4))):
            step = draw(st.sampled_from(["say", "tools", "system"]))
            if step == "say":
                messages.append({"role": "assistant", "content": draw(text)})
            elif step == "system":
                messages.append({"role": "system", "content": draw(text)})
            else:
                calls = []
                results = []
                for _ in range(draw(st.integers(1, 3))):
                    counter += 1
                    call_id = f"call_{counter}"
                    args = {"path": draw(st.sampled_from(PATHS))}
                    if draw(st.booleans()):
                        args["content"] = draw(text)
                    calls.append(
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": draw(st.sampled_from(TOOLS)),
                                "arguments": json.dumps(args),
                            },
                        }
                    )
                    results.append(
                        {"role": "tool", "tool_call_id": call_id, "content": draw(tool_result())[0]}
                    )
                content = draw(st.one_of(st.none(), text))
                messages.append({"role": "assistant", "content": content, "tool_calls": calls})
                messages.extend(results)
    return messages


configs = st.builds(
    CompactionConfig,
    protect_last_n_turns=st.integers(0, 3),
    max_tool_output_chars=st.one_of(st.none(), st.integers(10, 300)),
    keep_tool_summary=st.booleans(),
    drop_system_after_turn=st.one_of(st.none(), st.integers(0, 2)),
    collapse_consecutive_assistant=st.booleans(),
    head_lines=st.integers(0, 4),
    tail_lines=st.integers(0, 3),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions(), configs)
def test_random_sessions_keep_every_guarantee(
    messages: list[Message], config: CompactionConfig
) -> None:
    validate_messages(messages)
    check_guarantees(messages, config)
