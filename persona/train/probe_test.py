"""A vector alone on its base, against a probe file: does it do what it was trained for?

Task arithmetic with one vector: ``W = W_base + alpha * delta`` for every tensor the
vector touches (``delta = scale * B @ A`` for LoRA factors, made one tensor at a
time in float32), applied in memory to the loaded base, so nothing is built or
written. Each probe is answered greedily twice, by the base and by base plus
vector, under the same system prompt (none, or a prompt file with some sections
left out: a distilled identity vector is tested *without* its section), and the
probe's checks decide pass or fail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from persona.aer.probes import Probe, run_checks
from persona.aer.runner import TransformersRunner
from persona.aer.tokens import build_messages
from persona.errors import Incompatible
from persona.repo import Repository
from persona.store import objects as obj


@dataclass
class Answer:
    passed: bool
    answer: str
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "answer": self.answer, "failures": self.failures}


@dataclass
class ProbeOutcome:
    id: str
    section: str
    base: Answer
    vector: Answer

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "section": self.section, "base": self.base.to_json(),
                "vector": self.vector.to_json()}


def apply_vector(model: Any, repo: Repository, vector: obj.Vector, alpha: float = 1.0) -> list[str]:
    """Add ``alpha`` times the vector's delta to the model's weights in place; returns the tensors changed."""
    import torch

    from persona.porcelain.deltas import base_tree, vector_delta

    params = dict(model.named_parameters())
    base = base_tree(repo, vector)
    changed: list[str] = []
    with torch.no_grad():
        for name in vector.touched():
            param = params.get(name)
            if param is None:
                raise Incompatible(f"the vector changes {name}, which the loaded model does not have",
                                   "the vector was made for another architecture")
            delta = vector_delta(repo, vector, name, base=base)
            if tuple(delta.shape) != tuple(param.shape):
                raise Incompatible(f"the vector's {name} is {list(delta.shape)}, the model's {list(param.shape)}",
                                   "the vector was made for another base")
            param.add_((alpha * delta).to(device=param.device, dtype=param.dtype))
            changed.append(name)
    return changed


def answer_probes(runner: TransformersRunner, probes: Sequence[Probe], system: str | None,
                  max_new_tokens: int, progress: Callable[[int], None] | None = None) -> list[Answer]:
    answers = []
    for probe in probes:
        text = runner.generate(build_messages(system, probe.messages), max_new_tokens)
        check = run_checks(probe, text)
        answers.append(Answer(check.passed, text, list(check.failures)))
        if progress is not None:
            progress(1)
    return answers


def pass_rate(answers: Sequence[Answer]) -> float:
    return sum(a.passed for a in answers) / len(answers) if answers else 0.0
