"""Parse, validate and serialise chat sessions (OpenAI messages, Hermes session JSON).

Two input shapes are accepted:

* a bare message array: ``[{"role": "system", ...}, {"role": "user", ...}, ...]``;
* a Hermes session object: ``{"session_id": ..., "model": ..., "messages": [...]}``.
  Everything but ``messages`` is kept untouched on output, in the same key order
  (so a Hermes ``message_count`` keeps describing the raw session the file was
  made from, which is where the full history lives).

Messages follow the OpenAI chat format: roles ``system``, ``user``,
``assistant`` and ``tool``; an assistant message may carry ``tool_calls``
(``{"id", "type": "function", "function": {"name", "arguments"}}``) and each
call is answered by a ``tool`` message with the matching ``tool_call_id``.

Validation is strict because the output must be valid for the next request,
and compaction cannot repair a broken input without inventing data. Every error
names the message index (0-based, as in the JSON array):

* not JSON, not UTF-8, not an array or an object with a ``messages`` array;
* a message that is not an object, an unknown or missing role, a bad content type;
* a malformed tool call, or a tool call id used twice;
* a tool response with no call, one that answers a call made later (a cycle),
  one that does not directly follow its call's assistant message (only tool
  messages may sit between a call and its response, as the OpenAI API
  requires), or a second response to the same call;
* a tool call left without a response.

Output is UTF-8 JSON with one message per line (``dump_session``), keys in
the order they were read, so the same input always gives the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from persona.errors import InvalidInput

ROLES = ("system", "user", "assistant", "tool")

Message = dict[str, Any]

_HINT = (
    "expected an OpenAI-style message array, or a Hermes session object with a "
    "'messages' array; see examples/sessions/"
)


@dataclass(frozen=True)
class Session:
    """A message list, and the Hermes wrapper object it came in (if any).

    ``validated`` records that ``validate_messages`` passed (``parse_session``
    sets it), so the engine does not check the same messages twice.
    """

    messages: list[Message]
    wrapper: dict[str, Any] | None = None
    validated: bool = field(default=False, compare=False, repr=False)

    def with_messages(self, messages: list[Message], *, validated: bool = False) -> Session:
        """The same session shape holding other messages."""
        return Session(messages=messages, wrapper=self.wrapper, validated=validated)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_session(data: bytes | str, source: str = "<input>") -> Session:
    """Parse and validate session JSON; raise ``InvalidInput`` naming the problem."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{source}: not UTF-8 text (byte {exc.start})", _HINT) from exc
    else:
        text = data
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidInput(f"{source}: not valid JSON: {exc}", _HINT) from exc
    if isinstance(obj, list):
        session = Session(messages=obj)
    elif isinstance(obj, dict) and isinstance(obj.get("messages"), list):
        session = Session(messages=obj["messages"], wrapper=obj)
    elif isinstance(obj, dict):
        raise InvalidInput(f"{source}: a JSON object without a 'messages' array", _HINT)
    else:
        raise InvalidInput(f"{source}: not a message array (got JSON {type(obj).__name__})", _HINT)
    validate_messages(session.messages, source)
    return Session(session.messages, session.wrapper, validated=True)


def _fail(source: str, index: int, problem: str) -> InvalidInput:
    return InvalidInput(f"{source}: message {index}: {problem}", _HINT)


def _check_content(source: str, index: int, message: Message) -> None:
    content = message.get("content")
    if content is None or isinstance(content, str):
        return
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return
    raise _fail(
        source,
        index,
        f"content must be a string, null or a list of parts, not {type(content).__name__}",
    )


def _check_calls(source: str, index: int, message: Message) -> list[str]:
    calls = message.get("tool_calls")
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise _fail(source, index, "tool_calls must be a list")
    ids = []
    for position, call in enumerate(calls):
        where = f"tool_calls[{position}]"
        if not isinstance(call, dict):
            raise _fail(source, index, f"{where} is not an object")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise _fail(source, index, f"{where} has no id")
        function = call.get("function")
        if not isinstance(function, dict):
            raise _fail(source, index, f"{where} ({call_id!r}) has no 'function' object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _fail(source, index, f"{where} ({call_id!r}) has no function name")
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str | dict):
            raise _fail(
                source, index, f"{where} ({call_id!r}) arguments must be a JSON string or an object"
            )
        ids.append(call_id)
    return ids


def validate_messages(messages: list[Any], source: str = "<input>") -> None:
    """Check roles, contents and tool-call pairing; see the module docstring."""
    call_site: dict[str, int] = {}
    calls_by_message: dict[int, list[str]] = {}
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _fail(source, index, f"not an object (got {type(message).__name__})")
        role = message.get("role")
        if role not in ROLES:
            if role is None:
                raise _fail(source, index, "has no 'role'")
            raise _fail(
                source, index, f"unknown role {role!r} (expected one of {', '.join(ROLES)})"
            )
        _check_content(source, index, message)
        if role == "assistant":
            ids = _check_calls(source, index, message)
            for call_id in ids:
                if call_id in call_site:
                    raise _fail(
                        source,
                        index,
                        f"tool call id {call_id!r} is already used by message {call_site[call_id]}",
                    )
                call_site[call_id] = index
            calls_by_message[index] = ids
        elif message.get("tool_calls") is not None:
            raise _fail(source, index, f"a {role} message cannot carry tool_calls")

    open_index: int | None = None
    pending: dict[str, None] = {}
    answered: set[str] = set()

    def close(at: int) -> None:
        if pending:
            call_id = next(iter(pending))
            raise _fail(
                source,
                open_index if open_index is not None else at,
                f"tool call {call_id!r} has no tool response (expected right after this message)",
            )

    for index, message in enumerate(messages):
        role = message["role"]
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise _fail(source, index, "tool message has no tool_call_id")
            if call_id in pending:
                del pending[call_id]
                answered.add(call_id)
                continue
            if call_id in answered:
                raise _fail(source, index, f"second tool response to call {call_id!r}")
            site = call_site.get(call_id)
            if site is None:
                raise _fail(
                    source,
                    index,
                    f"tool response with no call: no assistant message made call {call_id!r}",
                )
            if site > index:
                raise _fail(
                    source,
                    index,
                    f"tool response to call {call_id!r}, which is only made later by message {site} "
                    "(tool calls out of order: a cycle)",
                )
            raise _fail(
                source,
                index,
                f"tool response to call {call_id!r} of message {site} does not directly follow "
                "that message (only tool responses may come between a call and its response)",
            )
        close(index)
        if role == "assistant" and calls_by_message.get(index):
            open_index = index
            pending = dict.fromkeys(calls_by_message[index])
        else:
            open_index = None
    close(len(messages))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _message_lines(messages: list[Message], indent: str) -> str:
    if not messages:
        return "[]"
    body = ",\n".join(indent + "  " + _dumps(message) for message in messages)
    return f"[\n{body}\n{indent}]"


def dump_session(session: Session) -> bytes:
    """Serialise ``session`` in its original shape, deterministically.

    One message per line: readable, friendly to ``diff`` and ``grep``, and
    written by the C JSON encoder (``indent=`` would switch Python to its pure
    Python encoder, several times slower on a large session). A Hermes
    wrapper keeps its keys in their order, one per line.
    """
    if session.wrapper is None:
        text = _message_lines(session.messages, "")
    else:
        lines = []
        for key, value in session.wrapper.items():
            rendered = (
                _message_lines(session.messages, "  ") if key == "messages" else _dumps(value)
            )
            lines.append(f"  {_dumps(key)}: {rendered}")
        text = "{\n" + ",\n".join(lines) + "\n}"
    return (text + "\n").encode("utf-8")
