"""The compaction rules of seed 004, one function each.

Each rule takes the working list of ``Slot``s and returns a new list plus what
it changed; it never mutates a message (``content.with_content`` copies), so the
parsed input stays intact. Rules 5 and 6 are not functions but invariants every
rule honours: a rule only ever rewrites or removes system, assistant and tool
messages (rule 5: user messages are never touched) and skips any slot marked
``protected`` (rule 6: the last N turns, see ``turns.py``).

1. ``collapse_tool_pairs``: a succeeded call and its response become one line
   appended to the calling assistant message, ``[tool: read_file("config.yaml")
   -> ok, 347 chars]``; the call leaves ``tool_calls`` (the key goes when the
   list empties, since an empty list is invalid) and the response is removed.
   Failed calls (``outcome.py``), responses already truncated by rule 2 and
   responses with non-text parts stay as they are.
2. ``truncate_tool_outputs``: ``truncate.py`` on every remaining tool result.
3. ``drop_late_system``: a system message in a turn after
   ``drop_system_after_turn`` becomes ``[system prompt: "<first heading>",
   refs: SOUL.md skills/git.md, 16234 chars]``, naming what was loaded.
4. ``collapse_assistant_runs``: in a run of consecutive assistant messages the
   last is kept; it is prefixed with ``[collapsed N earlier assistant
   messages; refs: ...]`` and the ``[tool: ...]`` lines of the ones dropped, so
   rule 1's summaries and every path or URL survive the collapse.

Every line a rule writes names the paths and URLs of the text it removed (unless
the kept text already shows them): that is how the preservation guarantee holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from persona.compact.config import CompactionConfig
from persona.compact.content import (
    Message,
    call_text,
    content_text,
    is_text_only,
    join_lines,
    with_content,
)
from persona.compact.outcome import json_object, tool_failed
from persona.compact.refs import content_refs, find_refs, format_refs, missing_refs, value_refs
from persona.compact.truncate import Truncator, is_truncated

# Argument values up to this many characters (and on one line) are shown whole
# in a tool summary; longer ones become "<N chars>" plus the refs they contain.
ARG_INLINE_LIMIT = 120
# The first heading or line of a dropped system message is shown up to this size.
TITLE_LIMIT = 60

TOOL_LINE_RE = re.compile(r"^\[tool: .*\]$")
SYSTEM_MARKER_RE = re.compile(r"\[system prompt: [^\n]*\]")
_HEADING_RE = re.compile(r"^\s{0,3}#{1,6}\s+(\S.*?)\s*#*\s*$", re.M)


@dataclass(frozen=True)
class Slot:
    """One message being compacted, with what the rules need to know about it."""

    message: Message
    protected: bool
    turn: int
    tokens: int | None = None

    @property
    def role(self) -> str:
        return self.message["role"]


@dataclass(frozen=True)
class RuleOutcome:
    """A rule's new slot list, and how many messages it rewrote and removed."""

    slots: list[Slot]
    changed: int = 0
    removed: int = 0


def _rewrite(slot: Slot, message: Message) -> Slot:
    return replace(slot, message=message, tokens=None)


# -- rule 1 -------------------------------------------------------------------------


def _render_value(value: Any) -> str:
    if isinstance(value, str):
        if len(value) <= ARG_INLINE_LIMIT and "\n" not in value:
            return json.dumps(value, ensure_ascii=False)
        return f"<{len(value)} chars>"
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= ARG_INLINE_LIMIT:
        return text
    kind = "list" if isinstance(value, list) else "object"
    return f"<{kind}, {len(text)} chars>"


def render_call(call: dict[str, Any]) -> tuple[str, list[str]]:
    """``name(args)`` for a summary line, and the refs found in the arguments.

    One argument renders as its value, ``read_file("config.yaml")``; several as
    ``name(key=value, ...)`` in their original order. Long values are elided;
    the refs returned let the caller list the paths and URLs they held.
    """
    function = call["function"]
    name = function["name"]
    arguments = function.get("arguments")
    parsed: Any
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return f"{name}()", []
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return f"{name}({_render_value(arguments)})", find_refs(arguments)
    else:
        parsed = arguments
    refs = value_refs(parsed)
    if isinstance(parsed, dict):
        if len(parsed) == 1:
            rendered = _render_value(next(iter(parsed.values())))
        else:
            rendered = ", ".join(f"{key}={_render_value(value)}" for key, value in parsed.items())
        return f"{name}({rendered})", refs
    return f"{name}({_render_value(parsed)})", refs


def summarize_call(call: dict[str, Any], response_text: str, parsed: Any = None) -> str:
    """The one line that replaces a succeeded call and its response.

    ``parsed`` is the response decoded from JSON, when the caller has it.
    """
    rendered, arg_refs = render_call(call)
    refs = missing_refs([*arg_refs, *content_refs(response_text, parsed)], rendered)
    tail = f"; refs: {format_refs(refs)}" if refs else ""
    return f"[tool: {rendered} -> ok, {len(response_text)} chars{tail}]"


def collapse_tool_pairs(slots: list[Slot], config: CompactionConfig) -> RuleOutcome:
    """Rule 1: replace each succeeded, unprotected call/response pair by a summary line."""
    if not config.keep_tool_summary:
        return RuleOutcome(slots)
    response_at = {
        slot.message["tool_call_id"]: index
        for index, slot in enumerate(slots)
        if slot.role == "tool"
    }
    dropped: set[int] = set()
    rewritten: dict[int, Slot] = {}
    for index, slot in enumerate(slots):
        message = slot.message
        if slot.protected or slot.role != "assistant" or not message.get("tool_calls"):
            continue
        if not is_text_only(message.get("content")):
            continue
        kept_calls = []
        lines = []
        for call in message["tool_calls"]:
            at = response_at.get(call["id"])
            if at is None or slots[at].protected:
                kept_calls.append(call)
                continue
            response = slots[at]
            response_content = response.message.get("content")
            if not is_text_only(response_content):
                kept_calls.append(call)
                continue
            text = content_text(response_content)
            parsed = json_object(text)
            if tool_failed(response.message, text, config, parsed) or is_truncated(text):
                kept_calls.append(call)
                continue
            lines.append(summarize_call(call, text, parsed))
            dropped.add(at)
        if not lines:
            continue
        new = with_content(message, join_lines(content_text(message.get("content")), *lines))
        if kept_calls:
            new["tool_calls"] = kept_calls
        else:
            del new["tool_calls"]
        rewritten[index] = _rewrite(slot, new)
    out = [rewritten.get(index, slot) for index, slot in enumerate(slots) if index not in dropped]
    return RuleOutcome(out, changed=len(rewritten), removed=len(dropped))


# -- rule 2 -------------------------------------------------------------------------


def truncate_tool_outputs(slots: list[Slot], config: CompactionConfig) -> RuleOutcome:
    """Rule 2: truncate every unprotected tool result over ``max_tool_output_chars``."""
    if config.max_tool_output_chars is None:
        return RuleOutcome(slots)
    truncator = Truncator(config)
    out = []
    changed = 0
    for slot in slots:
        content = slot.message.get("content")
        if slot.protected or slot.role != "tool" or not is_text_only(content):
            out.append(slot)
            continue
        text = content_text(content)
        new_text = truncator.tool_output(text)
        if new_text == text:
            out.append(slot)
            continue
        out.append(_rewrite(slot, with_content(slot.message, new_text)))
        changed += 1
    return RuleOutcome(out, changed=changed)


# -- rule 3 -------------------------------------------------------------------------


def _title(text: str) -> str:
    heading = _HEADING_RE.search(text)
    if heading:
        title = heading.group(1)
    else:
        title = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(title) > TITLE_LIMIT:
        title = title[: TITLE_LIMIT - 3].rstrip() + "..."
    return title


def system_marker(text: str) -> str:
    """The one-line marker that stands for a dropped system message."""
    title = json.dumps(_title(text), ensure_ascii=False)
    refs = missing_refs(find_refs(text), title)
    parts = [title]
    if refs:
        parts.append(f"refs: {format_refs(refs)}")
    parts.append(f"{len(text)} chars")
    return f"[system prompt: {', '.join(parts)}]"


def drop_late_system(slots: list[Slot], config: CompactionConfig) -> RuleOutcome:
    """Rule 3: replace system messages after turn ``drop_system_after_turn`` by markers."""
    after = config.drop_system_after_turn
    if after is None:
        return RuleOutcome(slots)
    out = []
    changed = 0
    for slot in slots:
        content = slot.message.get("content")
        if (
            slot.protected
            or slot.role != "system"
            or slot.turn <= after
            or not is_text_only(content)
        ):
            out.append(slot)
            continue
        text = content_text(content)
        if SYSTEM_MARKER_RE.fullmatch(text):
            out.append(slot)
            continue
        out.append(_rewrite(slot, with_content(slot.message, system_marker(text))))
        changed += 1
    return RuleOutcome(out, changed=changed)


# -- rule 4 -------------------------------------------------------------------------


def _collapsible(slot: Slot) -> bool:
    return (
        not slot.protected
        and slot.role == "assistant"
        and is_text_only(slot.message.get("content"))
    )


def _merge_run(run: list[Slot]) -> Slot:
    dropped, last = run[:-1], run[-1]
    tool_lines: list[str] = []
    other_lines: list[str] = []
    for slot in dropped:
        for line in content_text(slot.message.get("content")).split("\n"):
            (tool_lines if TOOL_LINE_RE.match(line) else other_lines).append(line)
    last_text = content_text(last.message.get("content"))
    visible = join_lines(
        *tool_lines, last_text, *(call_text(call) for call in last.message.get("tool_calls") or [])
    )
    # Tool lines travel verbatim, refs and all; only the prose needs scanning.
    refs = missing_refs(find_refs("\n".join(other_lines)), visible)
    plural = "s" if len(dropped) > 1 else ""
    header = f"[collapsed {len(dropped)} earlier assistant message{plural}"
    header += f"; refs: {format_refs(refs)}]" if refs else "]"
    return _rewrite(last, with_content(last.message, join_lines(header, *tool_lines, last_text)))


def collapse_assistant_runs(slots: list[Slot], config: CompactionConfig) -> RuleOutcome:
    """Rule 4: keep only the last of consecutive unprotected assistant messages."""
    if not config.collapse_consecutive_assistant:
        return RuleOutcome(slots)
    out: list[Slot] = []
    changed = removed = 0
    index = 0
    while index < len(slots):
        end = index
        while end < len(slots) and _collapsible(slots[end]):
            end += 1
        if end - index >= 2:
            out.append(_merge_run(slots[index:end]))
            changed += 1
            removed += end - index - 1
            index = end
        else:
            out.append(slots[index])
            index += 1
    return RuleOutcome(out, changed=changed, removed=removed)
