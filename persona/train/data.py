"""Chat training data: loading, validation, rendering, assistant-only labels.

Inputs accepted by ``persona train --data PATH``:

- a JSONL file, one ``{"messages": [{"role": ..., "content": ...}, ...]}`` per line
  (roles system, user, assistant; blank lines are skipped; other keys ignored);
- a Hermes/OpenAI session file (``.json``): a message array, or an object with a
  ``messages`` array (see examples/sessions/). Only the user and assistant turns
  are kept: system prompts, tool calls and tool results are what the model was
  *told*, not what it should learn to say; consecutive turns of one role (left
  behind once tool traffic is removed) are joined with a blank line;
- a directory: every ``*.jsonl`` and ``*.json`` file in it, in name order.

Every problem is an ``InvalidInput`` naming the file and the line (JSONL) or the
message index (sessions), raised before any model is loaded.

Labels: the loss covers assistant tokens only. The chat is rendered once with the
base's own chat template; the character span of each assistant turn is found by
rendering prefixes (the conversation up to the turn with the generation prompt,
and up to and including the turn) and checking that each is a prefix of the
full render. The span runs from the end of the generation prompt to the end of
the turn, so it includes the template's end-of-turn tokens (``<|im_end|>``):
the model must learn to stop. A token is labelled when its *start* offset lies in
a span: a token that straddles the boundary holds template text the model is
given at inference, never generates. Templates that rewrite earlier turns
(breaking the prefix property) fall back to locating the turn's content verbatim,
after the previous turn; a template that does not render the content verbatim
at all is an error. An ``open_end`` example (a teacher answer cut off by its
token budget) is labelled up to the end of its content only, so the student
does not learn to stop where the teacher was merely interrupted.

Sequences longer than ``max_length`` are cut on the right (and counted); one left
with no assistant token is an error naming its line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona.errors import InvalidInput, NotFound

IGNORE = -100
JSONL_ROLES = ("system", "user", "assistant")
SESSION_ROLES = ("system", "user", "assistant", "tool", "function", "developer")
_JSONL_HINT = 'each line must be {"messages": [{"role": "user", "content": "..."}, ' \
              '{"role": "assistant", "content": "..."}]}'
_SESSION_HINT = "a session is a message array, or an object with a 'messages' array; see examples/sessions/"


@dataclass(frozen=True)
class Example:
    """One conversation to learn from; ``source`` is where it came from (``file:line``)."""

    messages: tuple[dict[str, str], ...]
    source: str
    open_end: bool = False


@dataclass(frozen=True)
class ChatData:
    """Validated examples plus the digest of the bytes they came from (provenance)."""

    examples: list[Example]
    sha256: str
    source: str


@dataclass(frozen=True)
class Encoded:
    """Token ids and labels (``IGNORE`` outside assistant spans) of one example."""

    input_ids: list[int]
    labels: list[int]
    source: str
    truncated: bool = False

    @property
    def targets(self) -> int:
        """Number of labelled tokens (what the loss is averaged over)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE)


# -- reading --------------------------------------------------------------------------

def _read_text(path: Path, what: str) -> tuple[str, bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"{what} not found: {path}", "check the path") from exc
    except IsADirectoryError as exc:
        raise InvalidInput(f"{what} {path} is a directory", "give a file") from exc
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc.strerror or exc}", "check the path") from exc
    try:
        return raw.decode("utf-8-sig"), raw
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidInput(f"{path}:{line}: not UTF-8 text", "save the file as UTF-8") from exc


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_message(message: Any, where: str, roles: Sequence[str], hint: str) -> dict[str, str]:
    if not isinstance(message, dict):
        raise InvalidInput(f"{where}: a message must be an object, got {type(message).__name__}", hint)
    role = message.get("role")
    if role not in roles:
        shown = "no role" if role is None else f"unknown role {role!r}"
        raise InvalidInput(f"{where}: {shown} (expected one of {', '.join(roles)})", hint)
    content = message.get("content")
    if not isinstance(content, str):
        raise InvalidInput(f"{where}: content must be a string, got {type(content).__name__}", hint)
    return {"role": role, "content": content}


def parse_jsonl(text: str, source: str) -> list[Example]:
    """Examples from JSONL text; errors name ``source:line``."""
    examples: list[Example] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            item = json.loads(line, parse_constant=_no_constants)
        except ValueError as exc:
            raise InvalidInput(f"{where}: not valid JSON: {exc}", _JSONL_HINT) from None
        if not isinstance(item, dict) or not isinstance(item.get("messages"), list):
            raise InvalidInput(f"{where}: expected an object with a 'messages' array", _JSONL_HINT)
        if not item["messages"]:
            raise InvalidInput(f"{where}: 'messages' is empty", _JSONL_HINT)
        messages = tuple(_check_message(m, f"{where}: message {i}", JSONL_ROLES, _JSONL_HINT)
                         for i, m in enumerate(item["messages"]))
        if not any(m["role"] == "assistant" for m in messages):
            raise InvalidInput(f"{where}: no assistant message to learn from",
                               "every example needs at least one assistant turn")
        examples.append(Example(messages, where))
    return examples


def _content_text(content: Any, where: str) -> str | None:
    """A session message's text: a string, or the text parts of a content list."""
    if content is None:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                if not isinstance(part.get("text"), str):
                    raise InvalidInput(f"{where}: a text part without a 'text' string", _SESSION_HINT)
                parts.append(part["text"])
        return "\n".join(parts) if parts else None
    raise InvalidInput(f"{where}: content must be a string, a list of parts or null, got "
                       f"{type(content).__name__}", _SESSION_HINT)


def parse_session(text: str, source: str) -> Example:
    """The user/assistant turns of one Hermes/OpenAI session, as one example."""
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        raise InvalidInput(f"{source}: not valid JSON: {exc}", _SESSION_HINT) from None
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        data = data["messages"]
    if not isinstance(data, list):
        raise InvalidInput(f"{source}: not a session (a message array, or an object with 'messages')",
                           _SESSION_HINT)
    turns: list[dict[str, str]] = []
    for index, message in enumerate(data):
        where = f"{source}: message {index}"
        if not isinstance(message, dict):
            raise InvalidInput(f"{where}: a message must be an object, got {type(message).__name__}",
                               _SESSION_HINT)
        role = message.get("role")
        if role not in SESSION_ROLES:
            shown = "no role" if role is None else f"unknown role {role!r}"
            raise InvalidInput(f"{where}: {shown} (expected one of {', '.join(SESSION_ROLES)})", _SESSION_HINT)
        content = _content_text(message.get("content"), where)
        if role not in ("user", "assistant") or content is None or not content.strip():
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": turns[-1]["content"] + "\n\n" + content}
        else:
            turns.append({"role": role, "content": content})
    if not any(t["role"] == "assistant" for t in turns):
        raise InvalidInput(f"{source}: the session has no assistant text to learn from",
                           "give sessions with at least one assistant reply")
    return Example(tuple(turns), source)


def load_chat_data(path: Path | str) -> ChatData:
    """Read ``--data``: a JSONL file, a session JSON file, or a directory of them."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"training data not found: {path}", "check the --data path")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".jsonl", ".json")) \
        if path.is_dir() else [path]
    if not files:
        raise InvalidInput(f"{path}: no .jsonl or .json files in the directory",
                           "give a JSONL file, a session .json file, or a directory of them")
    digest = hashlib.sha256()
    examples: list[Example] = []
    for file in files:
        text, raw = _read_text(file, "training data")
        if path.is_dir():
            digest.update(file.name.encode() + b"\0" + hashlib.sha256(raw).hexdigest().encode() + b"\n")
        else:
            digest.update(raw)
        if file.suffix.lower() == ".json":
            examples.append(parse_session(text, str(file)))
        else:
            found = parse_jsonl(text, str(file))
            if not found:
                raise InvalidInput(f"{file}: no examples (the file is empty)",
                                   f"add one chat per line: {_JSONL_HINT}")
            examples.extend(found)
    return ChatData(examples, digest.hexdigest(), str(path))


# -- rendering and labels ---------------------------------------------------------------

def require_chat_template(tokenizer: Any) -> None:
    """Chat training needs a template to render with and offsets to label by."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput("the base's tokenizer has no chat template",
                           "train on an instruct model (its tokenizer carries a chat template)")
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidInput("the base's tokenizer is not a fast tokenizer: no character offsets",
                           "import a base with a tokenizer.json")


def render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool, where: str) -> str:
    try:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as exc:  # jinja errors and templates' own raise_exception()
        raise InvalidInput(f"{where}: the chat template cannot render this conversation: {exc}",
                           "check the turn order (the template may require user/assistant alternation)") from None
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: the chat template did not return text", "check the base's tokenizer")
    return text


def assistant_spans(tokenizer: Any, example: Example) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character spans the loss covers (see the module docstring)."""
    messages = list(example.messages)
    full = render(tokenizer, messages, False, example.source)
    spans: list[tuple[int, int]] = []
    cursor = 0
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], True, example.source)
        upto = render(tokenizer, messages[: i + 1], False, example.source)
        content = message["content"].strip()
        if upto.startswith(before) and full.startswith(upto) and len(before) >= cursor:
            start, end = len(before), len(upto)
            if example.open_end and i == last and content:
                found = upto.find(content, start)
                if found < 0:
                    raise InvalidInput(f"{example.source}: the chat template does not render assistant "
                                       f"message {i} verbatim", "use a base whose template keeps replies as written")
                end = found + len(content)
        else:
            found = full.find(content, cursor)
            if found < 0 or not content:
                raise InvalidInput(f"{example.source}: cannot locate assistant message {i} in the rendered "
                                   "chat (the template rewrites it)",
                                   "use a base whose chat template keeps replies as written")
            start, end = found, found + len(content)
        spans.append((start, end))
        cursor = end
    return full, spans


def encode(tokenizer: Any, example: Example, max_length: int) -> Encoded:
    """Token ids with assistant-only labels, cut to ``max_length``."""
    text, spans = assistant_spans(tokenizer, example)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(t) for t in enc["input_ids"]]
    labels = [IGNORE] * len(ids)
    span_index = 0
    for position, (start, _end) in enumerate(enc["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]:
            labels[position] = ids[position]
    truncated = len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    result = Encoded(ids, labels, example.source, truncated)
    if result.targets == 0:
        why = f"within --max-length {max_length}" if truncated else "after rendering"
        raise InvalidInput(f"{example.source}: no assistant tokens {why}",
                           "raise --max-length, or shorten the conversation" if truncated
                           else "give the assistant turn some text")
    return result


def encode_all(tokenizer: Any, examples: Iterable[Example], max_length: int) -> list[Encoded]:
    require_chat_template(tokenizer)
    if max_length < 2:
        raise InvalidInput(f"--max-length must be at least 2, got {max_length}", "e.g. --max-length 512")
    return [encode(tokenizer, example, max_length) for example in examples]
