"""Batches and the supervised (SFT) objective.

A batch is right-padded; ``target_mask[b, t]`` marks the positions whose *next*
token is a target (an assistant token), and ``target_ids`` lists those next
tokens flattened in row-major order. Logits are computed only at the masked
positions, and the system prompt every row shares is run once per batch
(persona.lm.forward), which is most of a distillation batch's tokens.

Both objectives return the *sum* of per-token losses and the number of target
tokens; the loop divides by the global batch's count, so a batch's loss is the
mean over its target tokens however it is split across processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from persona.train.data import IGNORE, Encoded


def collate(examples: Sequence[Encoded], pad_id: int, extra: dict[str, Sequence[Any]] | None = None) -> dict[str, Any]:
    """Pad ``examples`` into one batch; ``extra`` maps a key to per-example [T_i, ...] tensors to concatenate."""
    import torch

    length = max(len(e.input_ids) for e in examples)
    size = len(examples)
    input_ids = torch.full((size, length), pad_id, dtype=torch.long)
    attention = torch.zeros((size, length), dtype=torch.long)
    labels = torch.full((size, length), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        attention[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
    target_mask = torch.zeros((size, length), dtype=torch.bool)
    target_mask[:, :-1] = labels[:, 1:] != IGNORE
    batch: dict[str, Any] = {
        "input_ids": input_ids, "attention_mask": attention, "target_mask": target_mask,
        "target_ids": labels[:, 1:][target_mask[:, :-1]],
    }
    for key, parts in (extra or {}).items():
        batch[key] = torch.cat(list(parts), dim=0)
    return batch


def target_logits(model: Any, batch: dict[str, Any]) -> Any:
    """Logits [N, V] at the batch's N target positions (row-major), in float32 (see persona.lm.forward)."""
    from persona.lm.forward import target_logits as shared_target_logits

    return shared_target_logits(model, batch)


def sft_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """Summed cross-entropy of the target tokens, and their count."""
    import torch.nn.functional as F

    logits = target_logits(model, batch)
    targets = batch["target_ids"]
    return F.cross_entropy(logits, targets, reduction="sum"), int(targets.numel())


def token_count(examples: Sequence[Encoded]) -> list[int]:
    return [len(e.input_ids) for e in examples]


def target_counts(examples: Sequence[Encoded]) -> list[int]:
    return [e.targets for e in examples]
