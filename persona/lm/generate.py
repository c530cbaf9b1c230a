"""Batched generation that computes a shared system prompt once.

Every model run persona makes (teacher answers, probe answers, held-out
checks) is many short chats under the *same* system prompt: a 150-token
prompt in front of a 10-token question. Fed naively, the prompt is re-read for
every chat, and on a CPU that prefill is most of the cost (measured on
SmolLM2-135M, 2 cores: 32 chats of 190 tokens plus 48 new tokens each spent 4x
more matrix work in the prompt than in the answers). So:

1. chats are rendered with the tokenizer's chat template and grouped by their
   longest common token prefix (in practice: the rendered system prompt);
2. the prefix is run once (batch 1) and its key/value cache is repeated for
   every sequence of the group (``samples`` sequences per chat);
3. each chat's own tokens follow, laid out ``[prefix][pad..][suffix]`` with the
   pads masked out and position ids counting only real tokens, so every
   sequence sees exactly what it would see alone;
4. decoding runs one token per step for the whole batch; finished sequences
   are dropped from the batch (and the cache) once a quarter of it has ended.

Greedy decoding (``temperature == 0``) is what AER's checks and the run cache
rely on; sampling (temperature > 0, among the ``top_k`` likeliest tokens) draws from a
``torch.Generator`` seeded per call, so the same call returns the same samples.
Batching changes floating-point summation order, so a greedy answer can in
rare near-ties differ from an unbatched one; nothing persona stores depends on
which of the two was computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from persona.aer.tokens import Message, render_chat

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Generation:
    """One generated answer: its text, token ids, and whether it ended on its own."""

    text: str
    token_ids: tuple[int, ...]
    finished: bool


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token id that ends a turn for this model/tokenizer pair."""
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return sorted(ids)


def _pad_id(tokenizer: Any, eos: Sequence[int]) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if isinstance(pad, int):
        return pad
    return eos[0] if eos else 0


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every row."""
    if not rows:
        return 0
    first = rows[0]
    n = min(len(r) for r in rows)
    for row in rows[1:]:
        i = 0
        while i < n and row[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return n


def encode_chats(tokenizer: Any, chats: Sequence[Sequence[Message]],
                 answer_starts: Sequence[str] | None = None) -> list[list[int]]:
    """Token ids of each chat rendered with its generation prompt (and the start of the answer, if given)."""
    texts = [render_chat(tokenizer, chat, add_generation_prompt=True) for chat in chats]
    if answer_starts is not None:
        texts = [t + start for t, start in zip(texts, answer_starts, strict=True)]
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def _pick(logits: Any, temperature: float, top_k: int, generator: Any) -> Any:
    """Greedy at temperature 0, else a draw from the ``top_k`` most likely tokens.

    Sampling among the top k (not the whole vocabulary) is both the usual
    guard against the long tail of junk tokens and far cheaper: a multinomial
    over 49k entries per row costs more than the model's step on a CPU.
    """
    import torch

    if temperature <= 0:
        return logits.argmax(dim=-1)
    top = torch.topk(logits.float(), min(top_k, logits.shape[-1]), dim=-1)
    probs = torch.softmax(top.values / temperature, dim=-1)
    pick = torch.multinomial(probs, 1, generator=generator)
    return top.indices.gather(-1, pick).squeeze(-1)


def _group(model: Any, prompts: Sequence[list[int]], samples: int, max_new_tokens: int, eos: Sequence[int],
           pad: int, temperature: float, top_k: int, generator: Any) -> list[tuple[list[int], bool]]:
    """Generate for one group of prompts (sharing a prefix); one result per (prompt, sample)."""
    import torch

    from persona.lm.cache import growing_cache
    from persona.lm.forward import cache_keyword

    device = next(model.parameters()).device
    key = cache_keyword(model)
    shared = common_prefix(prompts)
    shared = min(shared, min(len(p) for p in prompts) - 1)  # every row keeps at least one own token
    rows = [p for p in prompts for _ in range(samples)]
    size = len(rows)
    cache = growing_cache(max(len(p) for p in prompts) + max_new_tokens)
    with torch.no_grad():
        if shared > 0:
            prefix = torch.tensor([prompts[0][:shared]], dtype=torch.long, device=device)
            model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True, **{key: cache})
            cache.batch_repeat_interleave(size)
        tails = [r[shared:] for r in rows]
        width = max(len(t) for t in tails)
        ids = torch.full((size, width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((size, shared + width), dtype=torch.long, device=device)
        mask[:, :shared] = 1
        positions = torch.zeros((size, width), dtype=torch.long, device=device)
        for i, tail in enumerate(tails):
            ids[i, width - len(tail):] = torch.tensor(tail, dtype=torch.long)
            mask[i, shared + width - len(tail):] = 1
            positions[i, width - len(tail):] = torch.arange(shared, shared + len(tail))
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **{key: cache})
        logits = out.logits[:, -1, :]
        next_pos = torch.tensor([len(r) for r in rows], dtype=torch.long, device=device)
        alive = list(range(size))  # row index of each live sequence
        tokens: list[list[int]] = [[] for _ in range(size)]
        finished = [False] * size
        eos_set = set(eos)
        for step in range(max_new_tokens):
            chosen = _pick(logits, temperature, top_k, generator).tolist()
            for row, tok in zip(alive, chosen, strict=True):
                if finished[row]:
                    continue  # a finished row still in the batch: its output is ignored
                if tok in eos_set:
                    finished[row] = True
                else:
                    tokens[row].append(int(tok))
            live = [slot for slot, row in enumerate(alive) if not finished[row]]
            if not live or step == max_new_tokens - 1:
                break
            # Dropping finished rows copies the whole cache, so it waits until a quarter have finished.
            if len(alive) - len(live) >= max(1, len(alive) // 4):
                index = torch.tensor(live, dtype=torch.long, device=device)
                cache.batch_select_indices(index)
                mask = mask[index]
                next_pos = next_pos[index]
                chosen = [chosen[k] for k in live]
                alive = [alive[k] for k in live]
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=torch.long, device=device)], dim=1)
            step_ids = torch.tensor(chosen, dtype=torch.long, device=device).unsqueeze(1)
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=next_pos.unsqueeze(1),
                        use_cache=True, **{key: cache})
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
    return [(tokens[i], finished[i]) for i in range(size)]


def generate(model: Any, tokenizer: Any, chats: Sequence[Sequence[Message]], max_new_tokens: int, *,
             samples: int = 1, temperature: float = 0.0, top_k: int = 50, seed: int = 0,
             batch_size: int = 64, progress: Progress | None = None,
             on_group: Callable[[list[int], list[list[Generation]]], None] | None = None,
             answer_starts: Sequence[str] | None = None) -> list[list[Generation]]:
    """``samples`` answers to each chat (``result[i][j]``: chat i, sample j).

    ``answer_starts[i]`` (optional) is text the answer to chat i is made to
    begin with: the model continues after it, and the returned text and token
    ids are the continuation only.

    Chats are processed in groups of at most ``batch_size`` sequences, grouped
    by their rendered prompt so each group shares the longest prefix;
    ``progress(n)`` is called with the number of chats finished after each group,
    and ``on_group(chat indices, their answers)`` with the group's results (so
    a caller can cache them before an interruption loses them).
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    was_training = model.training
    model.eval()
    eos = eos_ids(model, tokenizer)
    pad = _pad_id(tokenizer, eos)
    encoded = encode_chats(tokenizer, chats, answer_starts)
    order = sorted(range(len(chats)), key=lambda i: encoded[i])  # shared prefixes end up adjacent
    per_group = max(1, batch_size // samples)
    generator = torch.Generator(device="cpu").manual_seed(seed) if temperature > 0 else None
    if generator is not None and next(model.parameters()).device.type != "cpu":
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    results: list[list[Generation]] = [[] for _ in chats]
    try:
        for start in range(0, len(order), per_group):
            group = order[start:start + per_group]
            outs = _group(model, [encoded[i] for i in group], samples, max_new_tokens, eos, pad, temperature,
                          top_k, generator)
            for k, chat_index in enumerate(group):
                for ids, done in outs[k * samples:(k + 1) * samples]:
                    text = tokenizer.decode(ids, skip_special_tokens=True)
                    results[chat_index].append(Generation(text, tuple(ids), done))
            if on_group is not None:
                on_group(list(group), [results[i] for i in group])
            if progress is not None:
                progress(len(group))
    finally:
        if was_training:
            model.train()
    return results


def greedy(model: Any, tokenizer: Any, chats: Sequence[Sequence[Message]], max_new_tokens: int, *,
           batch_size: int = 64, progress: Progress | None = None) -> list[Generation]:
    """The greedy answer to each chat."""
    return [g[0] for g in generate(model, tokenizer, chats, max_new_tokens, batch_size=batch_size,
                                   progress=progress)]
