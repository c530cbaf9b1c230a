"""Token accounting: how many context tokens each prompt section costs.

Counts come from the model's own chat template, not from tokenizing the
prompt file alone, because that is what the model is actually fed: the
template adds role headers and special tokens, may trim the content, and some
templates inject a default system prompt when none is sent (SmolLM2's adds
"You are a helpful AI assistant named SmolLM, trained by Hugging Face"). So
the "no prompt" baseline is measured as the template really renders it, and
:func:`detect_default_system` reports what it injects.

Attribution: the rendered chat is tokenized once with offsets
(``return_offsets_mapping=True``, no extra special tokens: the template
already wrote them); each token goes to the section whose character span
contains the token's *start* offset, everything else (role headers, special
tokens, an injected default) is template overhead. A token straddling a
section boundary therefore counts for the section it starts in. Every token
lands in exactly one bucket, so the buckets sum exactly to the rendered count.

The *marginal saving* of a section is tokens(full render) minus tokens(render
without it): what dropping it really buys, which can differ from its
attributed count by merges at the boundary or, for the last remaining
section, by a default system prompt the template injects in its place (the
saving can then even be negative).

Nothing here imports torch; transformers is only touched through the
tokenizer object passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from persona.aer.sections import ALIGNMENT_KINDS, PromptDoc, Section
from persona.errors import InvalidInput

Message = Mapping[str, str]
EmptySystem = Literal["omit", "empty"]

_SENTINEL = "PERSONA_AER_SYSTEM_SENTINEL_0d5f"
_USER_SENTINEL = "PERSONA_AER_USER_SENTINEL_8c21"


def aer(c_alignment: int | float, c_total: int | float) -> float:
    """Alignment Efficiency Ratio: the share of the context window not spent on alignment."""
    if c_total <= 0:
        raise InvalidInput(
            f"context window must be positive, got {c_total}", "pass --context-window N"
        )
    return 1.0 - float(c_alignment) / float(c_total)


def resolve_context_window(explicit: int | None, model_config: Any = None) -> int:
    """C_total: the explicit ``--context-window``, else ``max_position_embeddings``.

    ``tokenizer.model_max_length`` is deliberately never used: for many models
    it is a placeholder (SmolLM2's GGUF tokenizer reports 1e30).
    ``model_config`` may be a transformers config or a plain dict.
    """
    if explicit is not None:
        if int(explicit) <= 0:
            raise InvalidInput(f"--context-window must be positive, got {explicit}")
        return int(explicit)
    configs = [model_config]
    if model_config is not None and hasattr(model_config, "get_text_config"):
        configs.append(model_config.get_text_config())
    for cfg in configs:
        if cfg is None:
            continue
        value = (
            cfg.get("max_position_embeddings")
            if isinstance(cfg, Mapping)
            else getattr(cfg, "max_position_embeddings", None)
        )
        if isinstance(value, int) and value > 0:
            return value
    raise InvalidInput(
        "cannot tell the model's context window: its config has no max_position_embeddings",
        "pass --context-window N",
    )


def require_chat_tokenizer(tokenizer: Any) -> None:
    """Refuse tokenizers that cannot give offsets or have no chat template."""
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidInput(
            f"{type(tokenizer).__name__} is not a fast tokenizer: token offsets are unavailable",
            "load the tokenizer with use_fast=True (a tokenizer.json)",
        )
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput(
            "the tokenizer has no chat template", "use an instruct model's tokenizer"
        )


def build_messages(
    system: str | None, turns: Iterable[Message] = (), empty_system: EmptySystem = "omit"
) -> list[dict[str, str]]:
    """The chat sent to a model: a system message holding ``system``, then the turns.

    When ``system`` is blank, ``empty_system="omit"`` sends no system message
    (what a deployment that dropped every section would do, so a template's
    injected default is then part of what is measured); ``"empty"`` sends an
    empty one.
    """
    msgs: list[dict[str, str]] = []
    if system is not None and (system.strip() or empty_system == "empty"):
        msgs.append({"role": "system", "content": system if system.strip() else ""})
    msgs.extend({"role": m["role"], "content": m["content"]} for m in turns)
    return msgs


def render_chat(
    tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = False
) -> str:
    """The chat as text, through the tokenizer's chat template."""
    require_chat_tokenizer(tokenizer)
    try:
        out = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja2 TemplateError, or a template's own raise_exception()
        raise InvalidInput(
            f"the chat template cannot render this conversation: {exc}",
            "the model's template may not accept a system message or this turn order",
        ) from exc
    if not isinstance(out, str):
        raise InvalidInput("apply_chat_template(tokenize=False) did not return text")
    return out


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text`` (no extra special tokens)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    return ids, offsets


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class Attribution:
    """One rendered chat, its token count split by section.

    ``sections`` maps each *kept* section name to its token count, in prompt
    order; ``sum(sections.values()) + overhead == total`` always.
    ``prompt_span`` is where the system text lies in ``rendered`` (None when
    no system message was sent).
    """

    rendered: str
    total: int
    sections: dict[str, int]
    overhead: int
    prompt_span: tuple[int, int] | None


def _locate(
    tokenizer: Any, messages: list[dict[str, str]], rendered: str, system: str, add_gen: bool
) -> tuple[int, int]:
    """Char offset in ``rendered`` that corresponds to offset 0 of ``system``, and its
    visible length. Exact when the template inserts the content verbatim; handles
    templates that trim it; refuses templates that rewrite it."""
    probe = [dict(m) for m in messages]
    probe[0] = {"role": "system", "content": _SENTINEL}
    sent = render_chat(tokenizer, probe, add_gen)
    if sent.count(_SENTINEL) == 1:
        head, tail = sent.split(_SENTINEL)
        if rendered == head + system + tail:
            return len(head), len(system)
    stripped = system.strip()
    idx = rendered.find(stripped) if stripped else -1
    if idx >= 0:
        lead = len(system) - len(system.lstrip())
        return idx - lead, lead + len(stripped)
    raise InvalidInput(
        "the chat template rewrites the system prompt text, so tokens cannot be attributed to sections",
        "use a model whose template inserts the system message verbatim",
    )


#: What token accounting renders after the system prompt: one empty user turn.
#: A lone system message is not a conversation every template accepts, and a
#: chat with the system message omitted is no conversation at all; with a user
#: turn, a template's injected default system prompt shows up exactly where a
#: real chat would have it. The turn's few tokens are overhead, identical in
#: every variant, so savings and C_alignment do not depend on it.
EMPTY_USER_TURN: tuple[Message, ...] = ({"role": "user", "content": ""},)


def attribute_tokens(
    tokenizer: Any,
    doc: PromptDoc,
    drop: Iterable[str] = (),
    *,
    turns: Sequence[Message] = EMPTY_USER_TURN,
    add_generation_prompt: bool = False,
    empty_system: EmptySystem = "omit",
) -> Attribution:
    """Render the prompt (minus ``drop``) as the system message before ``turns`` and
    attribute its tokens to sections (the rest is overhead)."""
    drop_set = set(drop)
    system = doc.render_without(drop_set)
    kept: list[Section] = [s for s in doc.sections if s.name not in drop_set]
    messages = build_messages(system, turns, empty_system)
    rendered = render_chat(tokenizer, messages, add_generation_prompt)
    ids, offsets = encode_with_offsets(tokenizer, rendered)
    counts = {s.name: 0 for s in kept}
    span: tuple[int, int] | None = None
    if messages and messages[0]["role"] == "system" and system:
        base, visible = _locate(tokenizer, messages, rendered, system, add_generation_prompt)
        span = (base, base + visible)
        # section spans in the rendered text, from cumulative lengths of the kept parts
        bounds: list[tuple[int, int, str]] = []
        pos = base
        for s in kept:
            bounds.append((pos, pos + len(s.text), s.name))
            pos += len(s.text)
        lo, hi = span
        for start, _end in offsets:
            if not lo <= start < hi:
                continue
            for b0, b1, name in bounds:
                if b0 <= start < b1:
                    counts[name] += 1
                    break
    total = len(ids)
    overhead = total - sum(counts.values())
    return Attribution(rendered, total, counts, overhead, span)


def marginal_savings(
    tokenizer: Any, doc: PromptDoc, *, empty_system: EmptySystem = "omit"
) -> dict[str, int]:
    """Per section: tokens(full render) - tokens(render without that section)."""
    full = attribute_tokens(tokenizer, doc, empty_system=empty_system).total
    return {
        s.name: full - attribute_tokens(tokenizer, doc, {s.name}, empty_system=empty_system).total
        for s in doc.sections
    }


@dataclass(frozen=True)
class DefaultSystemPrompt:
    """What the chat template injects by itself.

    ``when_absent``: text the template adds when no system message is sent
    (None if nothing); ``when_empty``: text it adds when the system message is
    empty. ``tokens_when_*``: the extra tokens that costs, compared with an
    empty system block.
    """

    when_absent: str | None
    when_empty: str | None
    tokens_when_absent: int
    tokens_when_empty: int

    @property
    def injects(self) -> bool:
        return bool(self.when_absent or self.when_empty)


def _injected(pre: str, skeleton: str) -> str | None:
    """The text ``pre`` (a render up to the user turn) has beyond an empty system block."""
    if len(pre) <= len(skeleton):
        return None
    p = 0
    while p < len(skeleton) and pre[p] == skeleton[p]:
        p += 1
    s = 0
    while s < len(skeleton) - p and pre[len(pre) - 1 - s] == skeleton[len(skeleton) - 1 - s]:
        s += 1
    middle = pre[p : len(pre) - s]
    return middle or None


def detect_default_system(tokenizer: Any) -> DefaultSystemPrompt:
    """Detect a default system prompt the template injects when none (or an empty one) is sent."""
    user = [{"role": "user", "content": _USER_SENTINEL}]
    r_absent = render_chat(tokenizer, user)
    r_empty = render_chat(tokenizer, [{"role": "system", "content": ""}, *user])
    r_sent = render_chat(tokenizer, [{"role": "system", "content": _SENTINEL}, *user])
    skeleton_full = r_sent.replace(_SENTINEL, "")

    def pre(text: str) -> str:
        i = text.find(_USER_SENTINEL)
        return text if i < 0 else text[:i]

    skeleton = pre(skeleton_full)
    absent = _injected(pre(r_absent), skeleton)
    empty = _injected(pre(r_empty), skeleton)
    base = count_tokens(tokenizer, skeleton_full)
    return DefaultSystemPrompt(
        when_absent=absent,
        when_empty=empty,
        tokens_when_absent=max(0, count_tokens(tokenizer, r_absent) - base) if absent else 0,
        tokens_when_empty=max(0, count_tokens(tokenizer, r_empty) - base) if empty else 0,
    )


@dataclass(frozen=True)
class SectionTokens:
    """Token cost of one section: attributed in the full render, and its marginal saving."""

    name: str
    kind: str
    kind_source: str
    tokens: int
    saving: int

    @property
    def is_alignment(self) -> bool:
        return self.kind in ALIGNMENT_KINDS


@dataclass(frozen=True)
class TokenReport:
    """Token accounting for ``persona aer --tokens-only`` and the start of a full run.

    ``total``: tokens of the full prompt rendered as the system message before
    an empty user turn (see :data:`EMPTY_USER_TURN`).
    ``no_alignment_total``: the same with every alignment section dropped;
    ``empty_total``: with every section dropped, as the template renders that
    (an injected default included).
    """

    c_total: int
    total: int
    overhead: int
    sections: list[SectionTokens]
    no_alignment_total: int
    empty_total: int
    default_system: DefaultSystemPrompt
    empty_system: EmptySystem = "omit"
    notes: list[str] = field(default_factory=list)

    @property
    def c_alignment(self) -> int:
        return sum(s.tokens for s in self.sections if s.is_alignment)

    @property
    def aer(self) -> float:
        return aer(self.c_alignment, self.c_total)

    def section(self, name: str) -> SectionTokens:
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(name)


def token_report(
    tokenizer: Any, doc: PromptDoc, c_total: int, *, empty_system: EmptySystem = "omit"
) -> TokenReport:
    """Everything AER needs to know about tokens, without running a model."""
    require_chat_tokenizer(tokenizer)
    full = attribute_tokens(tokenizer, doc, empty_system=empty_system)
    savings = marginal_savings(tokenizer, doc, empty_system=empty_system)
    sections = [
        SectionTokens(s.name, s.kind, s.kind_source, full.sections[s.name], savings[s.name])
        for s in doc.sections
    ]
    no_align = attribute_tokens(
        tokenizer, doc, doc.alignment_names, empty_system=empty_system
    ).total
    empty = attribute_tokens(tokenizer, doc, doc.names, empty_system=empty_system).total
    default = detect_default_system(tokenizer)
    notes: list[str] = []
    guessed = [s.name for s in doc.sections if s.kind_source != "explicit"]
    if guessed:
        notes.append(
            "kinds inferred from names (tag them to be sure): "
            + ", ".join(f"{s.name}={s.kind}" for s in doc.sections if s.name in guessed)
        )
    if default.when_absent and empty_system == "omit":
        notes.append(
            f"the chat template injects a default system prompt ({default.tokens_when_absent} tokens) "
            f"when none is sent: {default.when_absent.strip()!r}"
        )
    if default.when_empty and empty_system == "empty":
        notes.append(
            f"the chat template injects a default system prompt ({default.tokens_when_empty} tokens) "
            f"when the system message is empty: {default.when_empty.strip()!r}"
        )
    return TokenReport(
        c_total, full.total, full.overhead, sections, no_align, empty, default, empty_system, notes
    )
