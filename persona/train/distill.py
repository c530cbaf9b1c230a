"""Context distillation: the teacher's distributions, cached, and the objectives.

Context distillation (Askell et al. 2021; Snell et al. 2022; "Prompt Baking",
Bhargava et al. 2024) moves a prompt section into the weights. The *teacher* is
the base model with the full prompt as its system prompt (its answers come
from ``persona.train.teacher``); the *student* is the base plus a LoRA, shown
the prompt without the section. Three objectives:

- ``sft``: cross-entropy on the teacher's (checked, possibly resampled) answers.
- ``kl``: the student minimises KL(teacher || student) over the answer's
  tokens, teacher-forced: at each position both models see the same answer
  prefix, the teacher with the section (and its cue) and the student without.
  This matches the teacher's whole next-token distribution, not just its argmax.
- ``kl+sft``: the sum of the two per token.

Approximation (kl): the teacher's distribution at each position is kept as its
top-k log-probabilities (k = 64 by default), renormalised over those k tokens.
KL(p_k || q) is then sum over the k tokens of p_k (log p_k - log q), with q the
student's full softmax; the teacher's tail beyond its top k (usually well under
1% of the mass on an instruct model's answer tokens) is dropped. That makes the
cache ``T x k`` numbers per answer instead of ``T x V``, and the loss's gradient
is exactly that of cross-entropy against the truncated teacher.

The top-k cache (``repo.cache_dir("distill")/topk``) holds one safetensors file
per (base id, teacher token ids and labels, k); teacher passes run in batches
that share the system prompt's computation (``persona.lm.forward``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from persona import canonical
from persona.errors import PersonaError
from persona.fsutil import atomic_write_bytes
from persona.repo import Repository
from persona.train.data import IGNORE, Encoded
from persona.train.objectives import target_logits

Progress = Callable[[int, int], None]


def _key(data: dict[str, Any]) -> str:
    return hashlib.sha256(canonical.dumps(data)).hexdigest()


def target_ids(example: Encoded) -> list[int]:
    return [label for label in example.labels[1:] if label != IGNORE]


def teacher_topk(repo: Repository, model: Any, base_id: str, teachers: Sequence[Encoded], counts: Sequence[int],
                 k: int, batch_size: int = 8, progress: Progress | None = None) -> list[tuple[Any, Any]]:
    """Each teacher's renormalised top-k log-probs at its first ``counts[i]`` targets: [(indices [T,k], logp [T,k])]."""
    import torch
    from safetensors.torch import load, save

    from persona.train.objectives import collate

    folder = repo.cache_dir("distill") / "topk"
    results: list[tuple[Any, Any] | None] = [None] * len(teachers)
    paths = []
    for i, teacher in enumerate(teachers):
        ids_sha = hashlib.sha256(json.dumps([teacher.input_ids, teacher.labels]).encode()).hexdigest()
        key = _key({"base": base_id, "ids_sha256": ids_sha, "k": k})
        path = folder / key[:2] / f"{key}.safetensors"
        paths.append(path)
        if path.is_file():
            try:
                tensors = load(path.read_bytes())
                results[i] = (tensors["indices"], tensors["logp"])
            except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
                results[i] = None
    todo = [i for i, r in enumerate(results) if r is None]
    done = len(teachers) - len(todo)
    if progress is not None:
        progress(done, len(teachers))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            batch = collate([teachers[i] for i in chunk], pad_id=0)
            with torch.no_grad():
                logits = target_logits(model, {key: v.to(device) for key, v in batch.items()})
            offset = 0
            for i in chunk:
                n = teachers[i].targets
                logp = torch.log_softmax(logits[offset:offset + n], dim=-1)
                offset += n
                top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
                values = top.values - torch.logsumexp(top.values, dim=-1, keepdim=True)
                tensors = {"indices": top.indices.to(torch.int32).cpu().contiguous(),
                           "logp": values.to(torch.float32).cpu().contiguous()}
                atomic_write_bytes(paths[i], save(tensors))
                results[i] = (tensors["indices"], tensors["logp"])
            done += len(chunk)
            if progress is not None:
                progress(done, len(teachers))
    finally:
        if was_training:
            model.train()
    out = []
    for i, (result, count) in enumerate(zip(results, counts, strict=True)):
        assert result is not None
        indices, logp = result
        if indices.shape[0] < count:
            raise PersonaError(f"{teachers[i].source}: the teacher has {indices.shape[0]} answer tokens, "
                               f"the student {count}", "this is a bug in persona")
        out.append((indices[:count].long(), logp[:count]))
    return out


def _kl(logits: Any, batch: dict[str, Any]) -> Any:
    import torch

    logq = torch.log_softmax(logits, dim=-1).gather(1, batch["teacher_indices"])
    logp = batch["teacher_logp"]
    return (logp.exp() * (logp - logq)).sum()


def kl_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """Summed KL(teacher_topk || student) over the target positions, and their count."""
    logits = target_logits(model, batch)
    return _kl(logits, batch), int(logits.shape[0])


def kl_sft_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """Summed KL(teacher_topk || student) plus cross-entropy of the answer's tokens, and their count."""
    import torch.nn.functional as F

    logits = target_logits(model, batch)
    ce = F.cross_entropy(logits, batch["target_ids"], reduction="sum")
    return _kl(logits, batch) + ce, int(logits.shape[0])
