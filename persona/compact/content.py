"""Read and rewrite the ``content`` of an OpenAI-style chat message.

``content`` comes in three shapes: a string, ``None`` (an assistant message that
only calls tools) or a list of parts (``{"type": "text", "text": ...}``, images,
...). The rules work on text, so this module gives them one view of it and
rebuilds the same shape on the way out. A message with non-text parts (an
image, audio) is never rewritten: there is no faithful one-line summary of an
image, and dropping it would be deletion, not compression.

Messages are treated as immutable: every helper returns a new dict, so the
caller's parsed input stays exactly as it was read.
"""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]


def is_text_only(content: Any) -> bool:
    """True when ``content`` is a string, None, or a list of text parts only."""
    if content is None or isinstance(content, str):
        return True
    if isinstance(content, list):
        return all(
            isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
            for part in content
        )
    return False


def content_text(content: Any) -> str:
    """The text of ``content``; text parts are joined with newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                texts.append(json.dumps(part, ensure_ascii=False, sort_keys=True))
        return "\n".join(texts)
    return json.dumps(content, ensure_ascii=False, sort_keys=True)


def call_text(call: dict[str, Any]) -> str:
    """The text a tool call puts in the prompt: its name and its arguments."""
    function = call.get("function") or {}
    name = function.get("name") or ""
    arguments = function.get("arguments")
    if arguments is None:
        args = ""
    elif isinstance(arguments, str):
        args = arguments
    else:
        args = json.dumps(arguments, ensure_ascii=False)
    return f"{name}{args}"


def message_text(message: Message) -> str:
    """Everything in ``message`` that the model reads, for token counting."""
    text = content_text(message.get("content"))
    calls = message.get("tool_calls") or []
    if calls:
        text = "\n".join([text, *(call_text(call) for call in calls)])
    return text


def with_content(message: Message, text: str) -> Message:
    """A copy of ``message`` whose content is ``text``.

    A list of text parts becomes a single text part, so the shape (string or
    list) the input used is kept.
    """
    new = dict(message)
    if isinstance(message.get("content"), list):
        new["content"] = [{"type": "text", "text": text}]
    else:
        new["content"] = text
    return new


def join_lines(*pieces: str) -> str:
    """Join non-empty pieces with newlines."""
    return "\n".join(piece for piece in pieces if piece)
