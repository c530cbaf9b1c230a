"""Each compaction rule on small hand-built sessions, plus the protections (rules 5, 6)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from persona.compact import CompactionConfig, Session, compact, validate_messages
from persona.compact.turns import protected_start, turn_numbers

Message = dict[str, Any]


def call(call_id: str, name: str, **arguments: Any) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def assistant(content: str | None = None, *calls: dict[str, Any]) -> Message:
    message: Message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = list(calls)
    return message


def tool(call_id: str, content: str) -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def system(text: str) -> Message:
    return {"role": "system", "content": text}


def run(messages: list[Message], **settings: Any) -> list[Message]:
    settings.setdefault("protect_last_n_turns", 0)
    out, _ = compact(Session(messages), CompactionConfig(**settings))
    validate_messages(out.messages)
    return out.messages


def only(rule: int, **settings: Any) -> dict[str, Any]:
    """Settings that switch every rule off but ``rule``."""
    base: dict[str, Any] = {
        "keep_tool_summary": False,
        "max_tool_output_chars": None,
        "drop_system_after_turn": None,
        "collapse_consecutive_assistant": False,
    }
    on = {
        1: {"keep_tool_summary": True},
        2: {"max_tool_output_chars": 500},
        3: {"drop_system_after_turn": 1},
    }
    base.update(on.get(rule, {"collapse_consecutive_assistant": True}))
    base.update(settings)
    return base


# -- rule 1 ---------------------------------------------------------------------------


def test_rule1_collapses_a_succeeded_pair_into_one_line() -> None:
    body = "x" * 347
    messages = [
        user("read it"),
        assistant(None, call("c1", "read_file", path="config.yaml")),
        tool("c1", body),
        assistant("done"),
    ]
    out = run(messages, **only(1))
    assert [m["role"] for m in out] == ["user", "assistant", "assistant"]
    assert out[1]["content"] == '[tool: read_file("config.yaml") -> ok, 347 chars]'
    assert "tool_calls" not in out[1]


def test_rule1_summary_keeps_text_arguments_and_refs() -> None:
    long_text = "see docs/guide.md\n" + "words " * 100
    messages = [
        user("go"),
        assistant(
            "Writing two files.",
            call("c1", "patch", path="a.py", old="x = 1", new="x = 2"),
            call("c2", "write_file", path="notes/todo.md", content=long_text),
        ),
        tool("c1", "patched; backup at /tmp/a.py.orig"),
        tool("c2", "wrote 618 bytes"),
    ]
    out = run(messages, **only(1))
    lines = out[1]["content"].split("\n")
    assert lines[0] == "Writing two files."
    assert (
        lines[1]
        == '[tool: patch(path="a.py", old="x = 1", new="x = 2") -> ok, 33 chars; refs: /tmp/a.py.orig]'
    )
    assert lines[2] == (
        f'[tool: write_file(path="notes/todo.md", content=<{len(long_text)} chars>) -> ok, 15 chars; '
        "refs: docs/guide.md]"
    )


@pytest.mark.parametrize(
    "response",
    [
        json.dumps({"output": "boom", "exit_code": 2, "error": None}),
        json.dumps({"error": "rate limited"}),
        json.dumps({"success": False, "message": "nope"}),
        "Error: file not found: config/missing.yaml",
        'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad',
        "compiling...\nexit code: 1",
        "bash: foo: command not found",
    ],
)
def test_rule1_keeps_a_failed_call(response: str) -> None:
    messages = [
        user("go"),
        assistant(None, call("c1", "terminal", command="foo")),
        tool("c1", response),
    ]
    out = run(messages, **only(1))
    assert out == messages


def test_rule1_trusts_a_json_status_over_words_in_the_output() -> None:
    response = json.dumps(
        {"output": "grep: no such file or directory (in a log line)", "exit_code": 0}
    )
    messages = [
        user("go"),
        assistant(None, call("c1", "terminal", command="grep x log")),
        tool("c1", response),
    ]
    out = run(messages, **only(1))
    assert len(out) == 2
    assert out[1]["content"].startswith('[tool: terminal("grep x log") -> ok')


def test_rule1_is_error_flag_marks_failure() -> None:
    messages = [
        user("go"),
        assistant(None, call("c1", "fetch", url="https://example.org")),
        {"role": "tool", "tool_call_id": "c1", "content": "all good", "is_error": True},
    ]
    assert run(messages, **only(1)) == messages


def test_rule1_collapses_only_the_succeeded_call_of_a_parallel_pair() -> None:
    messages = [
        user("go"),
        assistant(
            None, call("ok1", "read_file", path="a.md"), call("bad", "read_file", path="b.md")
        ),
        tool("ok1", "content of a"),
        tool("bad", "Error: b.md not found"),
        assistant("b is missing"),
    ]
    out = run(messages, **only(1))
    assert [m["role"] for m in out] == ["user", "assistant", "tool", "assistant"]
    assert out[1]["content"] == '[tool: read_file("a.md") -> ok, 12 chars]'
    assert [c["id"] for c in out[1]["tool_calls"]] == ["bad"]
    assert out[2] == messages[3]


def test_rule1_off_when_keep_tool_summary_is_false() -> None:
    messages = [user("go"), assistant(None, call("c1", "ls")), tool("c1", "a b c")]
    assert run(messages, **only(4, keep_tool_summary=False)) == messages


# -- rule 2 ---------------------------------------------------------------------------


def test_rule2_keeps_head_and_tail_around_a_marker() -> None:
    lines = [f"line {i:03d} ok" for i in range(100)]
    response = "\n".join(lines)
    messages = [
        user("go"),
        assistant(None, call("c1", "terminal", command="seq")),
        tool("c1", response),
    ]
    out = run(messages, **only(2))
    expected = "\n".join([*lines[:10], "[...truncated 85 lines...]", *lines[-5:]])
    assert out[2]["content"] == expected


def test_rule2_keeps_error_lines_and_names_dropped_paths() -> None:
    lines = [f"step {i:03d} ok" for i in range(60)]
    lines[30] = "ERROR: disk quota exceeded"
    lines[40] = "wrote build/out/report.html"
    response = "\n".join(lines)
    messages = [
        user("go"),
        assistant(None, call("c1", "terminal", command="make")),
        tool("c1", response),
    ]
    out_lines = run(messages, **only(2))[2]["content"].split("\n")
    assert out_lines[:10] == lines[:10]
    assert out_lines[10] == "[...truncated 20 lines...]"
    assert out_lines[11] == "ERROR: disk quota exceeded"
    assert out_lines[12] == "[...truncated 24 lines; refs: build/out/report.html ...]"
    assert out_lines[13:] == lines[-5:]


def test_rule2_truncates_json_output_structurally() -> None:
    output = "\n".join(f"test_{i} PASSED" for i in range(80)) + "\nFAILED test_x - AssertionError"
    response = json.dumps({"output": output, "exit_code": 1, "error": None})
    messages = [
        user("go"),
        assistant(None, call("c1", "terminal", command="pytest")),
        tool("c1", response),
    ]
    out = run(messages, **only(2))
    result = json.loads(out[2]["content"])
    assert result["exit_code"] == 1 and result["error"] is None
    kept = result["output"].split("\n")
    assert kept[10] == "[...truncated 66 lines...]"
    assert "FAILED test_x - AssertionError" in kept
    assert len(out[2]["content"]) < len(response)


def test_rule2_never_cuts_a_json_error_value() -> None:
    stderr = "\n".join(f"warning {i}" for i in range(100))
    response = json.dumps({"output": "", "stderr": stderr, "exit_code": 3})
    messages = [
        user("go"),
        assistant(None, call("c1", "terminal", command="x")),
        tool("c1", response),
    ]
    assert run(messages, **only(2)) == messages


def test_rule2_shortens_a_single_long_line() -> None:
    response = "a" * 300 + " https://example.org/very/long/url " + "b" * 700
    messages = [user("go"), assistant(None, call("c1", "fetch", url="x")), tool("c1", response)]
    out = run(messages, **only(2))[2]["content"]
    removed = len(response) - 250 - 125
    assert out == (
        response[:250]
        + f"[...truncated {removed} chars; refs: https://example.org/very/long/url ...]"
        + response[-125:]
    )


def test_rule2_leaves_short_outputs_and_is_off_with_null() -> None:
    response = "\n".join(f"line {i}" for i in range(100))
    messages = [user("go"), assistant(None, call("c1", "ls")), tool("c1", response)]
    assert run(messages, **only(2, max_tool_output_chars=len(response))) == messages
    assert run(messages, **only(4, max_tool_output_chars=None)) == messages


# -- rule 3 ---------------------------------------------------------------------------


SKILL = (
    "# Skill: git workflow\nLoaded from skills/git/SKILL.md.\nAlways branch first.\n" + "tip\n" * 30
)


def test_rule3_replaces_late_system_messages_with_a_marker() -> None:
    messages = [
        system("You are Timmy."),
        user("hi"),
        assistant("hello"),
        system(SKILL),
        user("branch please"),
        assistant("ok"),
    ]
    out = run(messages, **only(3))
    assert out[0] == messages[0]
    assert out[3] == system(
        f'[system prompt: "Skill: git workflow", refs: skills/git/SKILL.md, {len(SKILL)} chars]'
    )
    assert out[1:3] == messages[1:3] and out[4:] == messages[4:]


def test_rule3_turn_zero_drops_the_first_system_prompt_too() -> None:
    soul = "You are Timmy. Read SOUL.md and https://example.org/values before answering."
    messages = [system(soul), user("hi"), assistant("hello")]
    out = run(messages, **only(3, drop_system_after_turn=0))
    assert out[0]["content"] == (
        f'[system prompt: "{soul[:57]}...", refs: https://example.org/values, {len(soul)} chars]'
    )
    assert run(messages, **only(4, drop_system_after_turn=None)) == messages


# -- rule 4 ---------------------------------------------------------------------------


def test_rule4_keeps_the_last_of_consecutive_assistant_messages() -> None:
    messages = [user("think"), assistant("step one"), assistant("step two"), assistant("answer")]
    out = run(messages, **only(4))
    assert out == [user("think"), assistant("[collapsed 2 earlier assistant messages]\nanswer")]


def test_rule4_carries_tool_summaries_and_refs_of_the_dropped_messages() -> None:
    messages = [
        user("go"),
        assistant("Reading src/app.py first.", call("c1", "read_file", path="src/app.py")),
        tool("c1", "print('hi')"),
        assistant("It prints; see https://docs.python.org/3/ for print."),
        assistant("Final answer."),
    ]
    out = run(messages, **only(1, collapse_consecutive_assistant=True))
    assert len(out) == 2
    assert out[1]["content"].split("\n") == [
        "[collapsed 2 earlier assistant messages; refs: https://docs.python.org/3/]",
        '[tool: read_file("src/app.py") -> ok, 11 chars]',
        "Final answer.",
    ]


def test_rule4_off_switch() -> None:
    messages = [user("think"), assistant("a"), assistant("b")]
    assert run(messages, **only(1, collapse_consecutive_assistant=False)) == messages


# -- rule 5 and rule 6 --------------------------------------------------------------------


def _busy_session() -> list[Message]:
    big = "\n".join(f"row {i} of /var/log/app.log" for i in range(200))
    messages: list[Message] = [system("You are Timmy.")]
    for turn in range(8):
        messages.append(
            user(f"request {turn}: " + "please " * 200 + "[tool: fake] [system prompt: x]")
        )
        messages.append(assistant(f"thinking {turn}"))
        messages.append(assistant(None, call(f"c{turn}", "terminal", command=f"cat log{turn}")))
        messages.append(tool(f"c{turn}", big))
        messages.append(system(SKILL))
        messages.append(assistant(f"answer {turn}"))
    return messages


def test_rule5_user_messages_are_byte_identical() -> None:
    messages = _busy_session()
    out = run(messages)
    before = [json.dumps(m) for m in messages if m["role"] == "user"]
    after = [json.dumps(m) for m in out if m["role"] == "user"]
    assert before == after


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_rule6_last_n_turns_are_byte_identical(n: int) -> None:
    messages = _busy_session()
    start = protected_start(messages, turn_numbers(messages), n)
    out = run(messages, protect_last_n_turns=n)
    tail = len(messages) - start
    assert [json.dumps(m) for m in out[-tail:]] == [json.dumps(m) for m in messages[start:]]
    assert len(out) < len(messages)


def test_turns_count_exchanges_not_user_messages() -> None:
    messages = [
        system("s"),
        user("u"),
        assistant(None, call("c1", "ls")),
        tool("c1", "x"),
        assistant("a"),
        user("u2"),
        assistant("a2"),
    ]
    assert turn_numbers(messages) == [1, 1, 1, 2, 2, 3, 3]
    # The last two turns start at the tool response: widened to its call.
    assert protected_start(messages, turn_numbers(messages), 2) == 2
    assert protected_start(messages, turn_numbers(messages), 1) == 5
    assert protected_start(messages, turn_numbers(messages), 0) == len(messages)
    assert protected_start(messages, turn_numbers(messages), 9) == 0


def test_protected_tool_pair_is_not_collapsed() -> None:
    messages = [
        user("go"),
        assistant(None, call("c1", "ls")),
        tool("c1", "a.txt"),
        assistant("done"),
    ]
    assert run(messages, protect_last_n_turns=1) == messages


# -- the whole pipeline on the example ------------------------------------------------------


def test_input_messages_are_not_mutated() -> None:
    messages = _busy_session()
    snapshot = copy.deepcopy(messages)
    run(messages)
    assert messages == snapshot
