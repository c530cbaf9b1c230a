"""Context distillation: the teacher's answers and distributions, cached, and the KL objective.

Context distillation (Askell et al. 2021; Snell et al. 2022; "Prompt Baking",
Bhargava et al. 2024) moves a prompt section into the weights. The *teacher* is
the base model with the full prompt as its system prompt; the *student* is the
base plus a LoRA, shown the prompt without the section. Two objectives:

- ``sft``: the teacher answers each question greedily and the student is trained
  on (system without the section, question, teacher answer), assistant tokens only.
- ``kl``: the student minimises KL(teacher || student) over the teacher answer's
  tokens, teacher-forced: at each position both models see the same answer
  prefix, the teacher with the section and the student without it. This matches
  the teacher's whole next-token distribution, not just its argmax.

Approximation (kl): the teacher's distribution at each position is kept as its
top-k log-probabilities (k = 64 by default), renormalised over those k tokens.
KL(p_k || q) is then sum over the k tokens of p_k (log p_k - log q), with q the
student's full softmax; the teacher's tail beyond its top k (usually well under
1% of the mass on an instruct model's answer tokens) is dropped. That makes the
cache ``T x k`` numbers per answer instead of ``T x V``, and the loss's gradient
is exactly that of cross-entropy against the truncated teacher.

Caches (under ``repo.cache_dir("distill")``, files written atomically):

- ``answers/``: one JSON per (base id, sha256 of the teacher's rendered prompt,
  question, max new tokens): re-running a distillation generates nothing.
- ``topk/``: one safetensors file per (base id, teacher token ids and labels, k).

A teacher answer cut off by ``--teacher-max-new-tokens`` is marked unfinished,
and the student is not taught to end its turn where the teacher was interrupted
(see ``data.Example.open_end``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from persona import canonical
from persona.aer.tokens import build_messages
from persona.errors import PersonaError
from persona.fsutil import atomic_write_bytes
from persona.repo import Repository
from persona.train.data import IGNORE, Encoded, render
from persona.train.objectives import target_logits

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TeacherAnswer:
    line: int
    question: str
    answer: str
    finished: bool  # the teacher ended its turn within the token budget


def _key(data: dict[str, Any]) -> str:
    return hashlib.sha256(canonical.dumps(data)).hexdigest()


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return sorted(ids)


def greedy(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> tuple[str, bool]:
    """The model's greedy continuation of a rendered chat prompt: (text, finished)."""
    import torch
    from transformers import GenerationConfig

    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    eos = _eos_ids(model, tokenizer)
    pad = getattr(tokenizer, "pad_token_id", None)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=eos or None, pad_token_id=pad if pad is not None else (eos or [0])[0])
    device = next(model.parameters()).device
    with torch.no_grad():
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             generation_config=config)
    new = out[0, len(ids):].tolist()
    finished = any(t in eos for t in new)
    if finished:
        new = new[: next(i for i, t in enumerate(new) if t in eos)]
    return tokenizer.decode(new, skip_special_tokens=True).strip(), finished


def teacher_answers(repo: Repository, model: Any, tokenizer: Any, base_id: str, system: str,
                    questions: Sequence[tuple[int, str]], max_new_tokens: int, source: str,
                    progress: Progress | None = None) -> list[TeacherAnswer]:
    """The teacher's greedy answer to each question, from the cache where it can be."""
    folder = repo.cache_dir("distill") / "answers"
    answers: list[TeacherAnswer] = []
    for done, (line, question) in enumerate(questions, start=1):
        messages = build_messages(system, [{"role": "user", "content": question}])
        prompt = render(tokenizer, messages, True, f"{source}:{line}")
        key = _key({"base": base_id, "render_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
                    "question": question, "max_new_tokens": max_new_tokens})
        path = folder / key[:2] / f"{key}.json"
        cached = None
        if path.is_file():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
                text, finished = str(cached["answer"]), bool(cached["finished"])
            except (OSError, ValueError, KeyError, TypeError):
                cached = None  # a damaged cache entry is regenerated
        if cached is None:
            model.eval()
            text, finished = greedy(model, tokenizer, prompt, max_new_tokens)
            atomic_write_bytes(path, json.dumps({"answer": text, "finished": finished}).encode())
        answers.append(TeacherAnswer(line, question, text, finished))
        if progress is not None:
            progress(done, len(questions))
    return answers


def target_ids(example: Encoded) -> list[int]:
    return [label for label in example.labels[1:] if label != IGNORE]


def teacher_topk(repo: Repository, model: Any, base_id: str, teacher: Encoded, count: int, k: int) -> tuple[Any, Any]:
    """The teacher's renormalised top-k log-probs at its first ``count`` targets: (indices [T,k], logp [T,k])."""
    import torch
    from safetensors.torch import load, save

    ids_sha = hashlib.sha256(json.dumps([teacher.input_ids, teacher.labels]).encode()).hexdigest()
    key = _key({"base": base_id, "ids_sha256": ids_sha, "k": k})
    path = repo.cache_dir("distill") / "topk" / key[:2] / f"{key}.safetensors"
    tensors = None
    if path.is_file():
        try:
            tensors = load(path.read_bytes())
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
            tensors = None
    if tensors is None:
        from persona.train.objectives import collate

        model.eval()
        batch = collate([teacher], pad_id=0)
        device = next(model.parameters()).device
        with torch.no_grad():
            logits = target_logits(model, {k2: v.to(device) for k2, v in batch.items()})
            logp = torch.log_softmax(logits, dim=-1)
            top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
            values = top.values - torch.logsumexp(top.values, dim=-1, keepdim=True)
        tensors = {"indices": top.indices.to(torch.int32).cpu().contiguous(),
                   "logp": values.to(torch.float32).cpu().contiguous()}
        atomic_write_bytes(path, save(tensors))
    if tensors["indices"].shape[0] < count:
        raise PersonaError(f"{teacher.source}: the teacher has {tensors['indices'].shape[0]} answer tokens, "
                           f"the student {count}", "this is a bug in persona")
    return tensors["indices"][:count].long(), tensors["logp"][:count]


def kl_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """Summed KL(teacher_topk || student) over the target positions, and their count."""
    import torch

    logits = target_logits(model, batch)
    logq = torch.log_softmax(logits, dim=-1).gather(1, batch["teacher_indices"])
    logp = batch["teacher_logp"]
    kl = (logp.exp() * (logp - logq)).sum()
    return kl, int(logits.shape[0])
