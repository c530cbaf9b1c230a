"""Model runners: the two things AER asks of a model.

1. ``generate(messages, max_new_tokens) -> str``: a greedy answer, for the
   pass/fail checks (greedy so a run is a pure function of the weights and the
   input, which is what makes the run cache sound).
2. ``answer_logprobs(messages, answer) -> ndarray[T, V]``: teacher-forced
   log-softmax over the vocabulary at each of the answer's T token positions,
   given the chat so far. The evaluator feeds the *same* answer text to the
   reference (base + full prompt) and to the model under test, so the two
   arrays line up position by position and KL(P_ref || P_other) is a plain sum
   over the vocabulary. Both models must share a tokenizer (a recipe is made
   from its base, so they do).

Runners carry a ``model_id`` that names the weights: it is part of every
run-cache key, so it must change whenever the weights do (the store's build id
or vector ids, not a directory name that gets rebuilt in place).

:class:`TransformersRunner` drives a Hugging Face causal LM; torch is imported
only inside its methods. :class:`FakeRunner` is a deterministic stand-in for
tests and demos: its output depends only on which marker strings appear in
its input, so a test can say exactly which section "matters" to it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from persona.aer.tokens import Message, render_chat, require_chat_tokenizer


@runtime_checkable
class ModelRunner(Protocol):
    """What the AER evaluator needs from a model."""

    model_id: str

    def generate(self, messages: Sequence[Message], max_new_tokens: int) -> str:
        """Greedy answer to the chat (the template's generation prompt appended)."""
        ...

    def answer_logprobs(self, messages: Sequence[Message], answer: str) -> np.ndarray:
        """Log-probabilities [T, V] of the next token at each of ``answer``'s T tokens."""
        ...


def generate_many(runner: Any, chats: Sequence[Sequence[Message]], max_new_tokens: int) -> list[str]:
    """Greedy answers to many chats: in batches when the runner can, else one by one."""
    if hasattr(runner, "generate_many"):
        return list(runner.generate_many(chats, max_new_tokens))
    return [runner.generate(chat, max_new_tokens) for chat in chats]


def answer_logprobs_many(runner: Any, items: Sequence[tuple[Sequence[Message], str]]) -> list[np.ndarray]:
    """Teacher-forced log-probs for many (chat, answer) pairs: batched when the runner can."""
    if hasattr(runner, "answer_logprobs_many"):
        return list(runner.answer_logprobs_many(items))
    return [runner.answer_logprobs(chat, answer) for chat, answer in items]


class TransformersRunner:
    """A transformers causal LM with its (fast) tokenizer, greedy and in eval mode."""

    def __init__(
        self, model: Any, tokenizer: Any, device: Any = None, model_id: str | None = None
    ) -> None:
        require_chat_tokenizer(tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        model.eval()
        if device is None:
            device = next(model.parameters()).device
        else:
            model.to(device)
        self.device = device
        cfg = getattr(model, "config", None)
        self.model_id = model_id or getattr(cfg, "_name_or_path", "") or type(model).__name__
        self.calls: Counter[str] = Counter()

    def _prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        text = render_chat(self.tokenizer, messages, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        for value in (
            getattr(self.tokenizer, "eos_token_id", None),
            getattr(getattr(self.model, "generation_config", None), "eos_token_id", None),
        ):
            if isinstance(value, int):
                ids.append(value)
            elif isinstance(value, (list, tuple)):
                ids.extend(int(v) for v in value)
        return sorted(set(ids))

    def generate(self, messages: Sequence[Message], max_new_tokens: int) -> str:
        import torch
        from transformers import GenerationConfig

        self.calls["generate"] += 1
        prompt = self._prompt_ids(messages)
        eos = self._eos_ids()
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = eos[0] if eos else 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos or None,
            pad_token_id=pad,
        )
        with torch.no_grad():
            input_ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
            )
        new = out[0, len(prompt) :].tolist()
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def generate_many(self, chats: Sequence[Sequence[Message]], max_new_tokens: int) -> list[str]:
        """Greedy answers in batches that share the system prompt's computation (persona.lm.generate)."""
        from persona.lm.generate import greedy

        self.calls["generate"] += len(chats)
        return [g.text for g in greedy(self.model, self.tokenizer, chats, max_new_tokens)]

    def answer_logprobs_many(self, items: Sequence[tuple[Sequence[Message], str]],
                             batch_size: int = 8) -> list[np.ndarray]:
        """:meth:`answer_logprobs` for many pairs, in batches sharing their common prefix."""
        import torch

        from persona.lm.forward import target_logits

        self.calls["answer_logprobs"] += len(items)
        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        rows = []
        for messages, answer in items:
            prompt = self._prompt_ids(messages)
            ans = list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])
            rows.append((prompt, ans))
        out: list[np.ndarray] = [np.zeros((0, vocab), dtype=np.float32) for _ in rows]
        todo = [i for i, (_, ans) in enumerate(rows) if ans]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            width = max(len(rows[i][0]) + len(rows[i][1]) for i in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            attention = torch.zeros_like(ids)
            mask = torch.zeros((len(chunk), width), dtype=torch.bool)
            for r, i in enumerate(chunk):
                prompt, ans = rows[i]
                seq = prompt + ans
                ids[r, :len(seq)] = torch.tensor(seq)
                attention[r, :len(seq)] = 1
                mask[r, len(prompt) - 1:len(seq) - 1] = True  # position t predicts token t+1
            batch = {"input_ids": ids.to(self.device), "attention_mask": attention.to(self.device),
                     "target_mask": mask.to(self.device)}
            with torch.no_grad():
                logp = torch.log_softmax(target_logits(self.model, batch), dim=-1).cpu().numpy()
            offset = 0
            for i in chunk:
                n = len(rows[i][1])
                out[i] = logp[offset:offset + n]
                offset += n
        return out

    def answer_logprobs(self, messages: Sequence[Message], answer: str) -> np.ndarray:
        import torch

        self.calls["answer_logprobs"] += 1
        prompt = self._prompt_ids(messages)
        ans = list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])
        if not ans:
            vocab = int(self.model.get_output_embeddings().weight.shape[0])
            return np.zeros((0, vocab), dtype=np.float32)
        with torch.no_grad():
            ids = torch.tensor([prompt + ans], dtype=torch.long, device=self.device)
            logits = self.model(input_ids=ids).logits[0]
            # position i predicts token i+1: the answer's tokens are predicted by
            # positions len(prompt)-1 ... len(prompt)+len(ans)-2
            window = logits[len(prompt) - 1 : len(prompt) + len(ans) - 1].float()
            return torch.log_softmax(window, dim=-1).cpu().numpy()


def _marker_vector(marker: str, vocab_size: int) -> np.ndarray:
    """A fixed pseudo-random logit offset per marker (sha256-seeded: stable across runs)."""
    seed = int.from_bytes(hashlib.sha256(marker.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).normal(0.0, 2.0, size=vocab_size)


class FakeRunner:
    """A deterministic model whose behaviour is driven by marker strings in its input.

    ``rules`` maps a marker to a phrase: when the marker occurs anywhere in
    the chat (system prompt or turns) the phrase is part of the answer;
    answers join the phrases in rule order, or say ``default`` if none fire.

    ``baked`` simulates a fine-tuned recipe: markers it behaves as if present
    even when they are not. Given as a mapping, ``{marker: [needed, ...]}``
    makes the baked behaviour conditional on other markers still being in the
    input, which is how tests build collateral damage (dropping two sections
    together breaks what dropping either alone did not).

    ``answer_logprobs`` returns one row per whitespace-separated word of the
    answer, each the log-softmax of the sum of the active markers' fixed
    logit vectors: two inputs with the same active markers give KL 0, and
    every differing marker adds KL. ``calls`` counts model calls, so tests can
    see the cache at work.
    """

    def __init__(
        self,
        rules: Mapping[str, str],
        baked: Iterable[str] | Mapping[str, Iterable[str]] = (),
        *,
        model_id: str = "fake",
        default: str = "I am not sure.",
        vocab_size: int = 32,
    ) -> None:
        self.rules = dict(rules)
        if isinstance(baked, Mapping):
            self.baked = {m: tuple(needs) for m, needs in baked.items()}
        else:
            self.baked = {m: () for m in baked}
        self.model_id = model_id
        self.default = default
        self.vocab_size = vocab_size
        self.calls: Counter[str] = Counter()

    def active(self, messages: Sequence[Message]) -> list[str]:
        """Markers in effect for this input, in rule order."""
        text = "\n".join(m["content"] for m in messages)
        out = []
        for marker in self.rules:
            needs = self.baked.get(marker)
            if marker in text or (needs is not None and all(n in text for n in needs)):
                out.append(marker)
        return out

    def generate(self, messages: Sequence[Message], max_new_tokens: int) -> str:
        self.calls["generate"] += 1
        phrases = [self.rules[m] for m in self.active(messages)]
        words = (" ".join(phrases) if phrases else self.default).split()
        return " ".join(words[:max_new_tokens])

    def answer_logprobs(self, messages: Sequence[Message], answer: str) -> np.ndarray:
        self.calls["answer_logprobs"] += 1
        logits = np.zeros(self.vocab_size)
        for marker in self.active(messages):
            logits = logits + _marker_vector(marker, self.vocab_size)
        logits = logits - logits.max()
        row = logits - np.log(np.exp(logits).sum())
        return np.tile(row, (len(answer.split()), 1))
