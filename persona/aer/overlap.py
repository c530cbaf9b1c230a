"""Overlap: a probe that nearly repeats a prompt a vector was trained on proves little.

A distilled vector that passes "What's your name?" after training on "What is
your name?" has shown it remembers, not that the behaviour generalises. So
every probe's user turns are compared with the training prompts of every
vector in the recipe (persona keeps them: ``prompts_file`` in the vector's
provenance), and a probe that nearly duplicates one is flagged and left out
of the verdict.

The similarity measure: both texts are normalised (Unicode NFKC, case-folded,
punctuation dropped, spaces collapsed: ``persona.train.prompt_pool.normalise``),
cut into character trigrams of the text padded with a space at each end, and
compared by Jaccard similarity (shared trigrams / all trigrams). A probe
overlaps when the similarity reaches :data:`THRESHOLD` (0.5) with any training
prompt. Character trigrams see through small rewordings that word sets miss:
"What is your name?" / "What's your name?" score 0.65, "What should I call
you?" / "What do I call you?" 0.54, "Are you ChatGPT?" / "You're ChatGPT,
aren't you?" 0.52, all flagged; other questions on the same topic stay below
("Who are you?" / "Who are you, and what do you do?" 0.46, "What's your
name?" / "Do you have a name?" 0.21, "What is your name?" / "Who made you?" 0.12).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from persona.train.prompt_pool import normalise

THRESHOLD = 0.5


def trigrams(text: str) -> frozenset[str]:
    padded = f" {normalise(text)} "
    return frozenset(padded[i:i + 3] for i in range(len(padded) - 2))


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two texts' character trigrams (see the module docstring)."""
    ta, tb = trigrams(a), trigrams(b)
    if not ta and not tb:
        return 1.0
    return len(ta & tb) / len(ta | tb)


@dataclass(frozen=True)
class OverlapFinding:
    probe_id: str
    section: str
    probe_text: str
    training_prompt: str
    vector: str
    similarity: float

    def to_json(self) -> dict[str, Any]:
        return {"probe": self.probe_id, "section": self.section, "probe_text": self.probe_text,
                "training_prompt": self.training_prompt, "vector": self.vector,
                "similarity": round(self.similarity, 3)}


class TrainingPrompts:
    """The user turns each vector was trained on, indexed for fast near-duplicate search."""

    def __init__(self, prompts: dict[str, Sequence[str]]) -> None:
        self.by_vector = {name: list(texts) for name, texts in prompts.items()}
        self._grams = {name: [(t, trigrams(t)) for t in texts] for name, texts in self.by_vector.items()}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_vector.values())

    def closest(self, text: str) -> tuple[float, str, str] | None:
        """(similarity, training prompt, vector) of the most similar training prompt."""
        grams = trigrams(text)
        best: tuple[float, str, str] | None = None
        for vector, items in self._grams.items():
            for prompt, other in items:
                union = grams | other
                score = len(grams & other) / len(union) if union else 1.0
                if best is None or score > best[0]:
                    best = (score, prompt, vector)
        return best


def probe_text(messages: Iterable[Any]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def find_overlaps(probes: Sequence[Any], training: TrainingPrompts,
                  threshold: float = THRESHOLD) -> dict[str, OverlapFinding]:
    """Probe id -> its overlap finding, for the probes at or above ``threshold``."""
    out: dict[str, OverlapFinding] = {}
    if not len(training):
        return out
    for probe in probes:
        text = probe_text(probe.messages)
        best = training.closest(text)
        if best is not None and best[0] >= threshold:
            out[probe.id] = OverlapFinding(probe.id, probe.section, text, best[1], best[2], best[0])
    return out


def training_prompts(repo: Any, vector_ids: dict[str, str]) -> TrainingPrompts:
    """The training prompts of the named vectors, from their provenance (vectors without any give none)."""
    from persona.store import objects as obj

    out: dict[str, list[str]] = {}
    for name, vid in vector_ids.items():
        vector = repo.get(vid, obj.Vector)
        oid = vector.provenance.get("prompts_file")
        if not isinstance(oid, str):
            continue
        try:
            data = json.loads(repo.get_file(oid))
        except (ValueError, UnicodeDecodeError):
            continue
        texts = []
        for item in data.get("train", []):
            texts.append(probe_text(item.get("messages", [])))
        out[name] = [t for t in texts if t.strip()]
    return TrainingPrompts(out)
