"""The model runs behind an AER evaluation: probes under prompt variants, batched and cached.

A *variant* is which sections of the prompt are dropped (a sorted tuple of
names), or :data:`NO_SYSTEM` for no system prompt at all (the damage check's
general questions). :meth:`Grid.run_all` answers a list of probes with one
model under one variant: answers already computed in this run are reused,
then the run cache is consulted, and everything still missing is generated
in one batch (``runner.generate_many``: the shared system prompt is computed
once, see ``persona.lm.generate``).

Every answer is checked by the probe's regexes, for *parroting*
(``persona.aer.parroting``) and for *looping* (``persona.aer.repetition``): an
answer that recites the prompt's instructions, or repeats itself to the end of
its budget, fails whatever its regexes say.

Cache keys: generation by (model id, sha256 of the exact rendered input, probe
id and turns hash, max_new_tokens); KL by both sides' keys plus the answer's
hash. The run cache persists on disk under the store, so a re-run costs only
what changed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from persona.aer.parroting import parroted_span
from persona.aer.probes import Probe, run_checks
from persona.aer.repetition import repetition
from persona.aer.runner import ModelRunner, answer_logprobs_many, generate_many
from persona.aer.sections import PromptDoc
from persona.aer.tokens import build_messages, count_tokens, render_chat
from persona.errors import Incompatible
from persona.fsutil import atomic_write_bytes

Progress = Callable[[int, int, str], None]
NO_SYSTEM: tuple[str, ...] = ("<no system prompt>",)


def _key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


class RunCache:
    """Model-run results keyed by what determines them; memory, plus disk if given.

    On disk each entry is one small JSON file ``<dir>/<ab>/<sha256>.json``
    written atomically, holding its key too, so a reader can verify it and an
    interrupted run leaves only whole entries. Unreadable entries are misses.
    """

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0

    def _path(self, digest: str) -> Path:
        assert self.directory is not None
        return self.directory / digest[:2] / f"{digest}.json"

    def get(self, key: dict[str, Any]) -> Any | None:
        digest = _key_digest(key)
        if digest in self._memory:
            self.hits += 1
            return self._memory[digest]
        if self.directory is not None:
            try:
                entry = json.loads(self._path(digest).read_text("utf-8"))
            except (OSError, ValueError):
                entry = None
            if isinstance(entry, dict) and entry.get("key") == key and "value" in entry:
                self._memory[digest] = entry["value"]
                self.hits += 1
                return entry["value"]
        self.misses += 1
        return None

    def put(self, key: dict[str, Any], value: Any) -> None:
        digest = _key_digest(key)
        self._memory[digest] = value
        if self.directory is not None:
            data = json.dumps({"key": key, "value": value}, sort_keys=True, ensure_ascii=False)
            atomic_write_bytes(self._path(digest), data.encode("utf-8"))


@dataclass(frozen=True)
class ProbeRun:
    """One probe, one model, one prompt variant."""

    probe_id: str
    section: str
    answer: str
    passed: bool
    failures: tuple[str, ...]
    input_tokens: int
    parroted: str | None = None


def pass_rate(runs: Sequence[ProbeRun]) -> float | None:
    return sum(r.passed for r in runs) / len(runs) if runs else None


def mean_kl(logp_ref: np.ndarray, logp_other: np.ndarray) -> float | None:
    """Mean over positions of KL(P_ref || P_other), in nats per token.

    Inputs are log-probabilities [T, V]. None when T is 0 (an empty answer has
    no tokens to compare). Probability mass the other model puts at exactly
    zero where the reference does not gives +inf, as it should.
    """
    p = np.asarray(logp_ref, dtype=np.float64)
    q = np.asarray(logp_other, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise Incompatible(
            f"teacher-forced log-probs do not line up: {p.shape} vs {q.shape}",
            "the base and the recipe must share a tokenizer and vocabulary",
        )
    if p.shape[0] == 0:
        return None
    prob = np.exp(p)
    with np.errstate(invalid="ignore", over="ignore"):
        terms = np.where(prob > 0, prob * (p - q), 0.0)
    per_pos = terms.sum(axis=-1)
    return float(max(0.0, per_pos.mean()))


def _label(drop: tuple[str, ...]) -> str:
    if drop == NO_SYSTEM:
        return "no system prompt"
    return "full prompt" if not drop else "without " + "+".join(drop)


class Grid:
    """Runs probes with the base or the recipe under prompt variants (see the module docstring)."""

    def __init__(self, runners: dict[str, ModelRunner], doc: PromptDoc, tokenizer: Any, max_new_tokens: int,
                 empty_system: Any, cache: RunCache, progress: Progress | None, regex_timeout: float,
                 allowed_phrases: Sequence[str] = ()) -> None:
        self.runners = runners
        self.doc = doc
        self.tok = tokenizer
        self.max_new_tokens = max_new_tokens
        self.empty_system = empty_system
        self.cache = cache
        self.progress = progress
        self.regex_timeout = regex_timeout
        self.allowed = list(allowed_phrases)
        self.done = 0
        self.total = 0
        self._renders: dict[tuple[str, tuple[str, ...]], tuple[list[dict[str, str]], str]] = {}
        self._input_tokens: dict[str, int] = {}
        self._runs: dict[tuple[str, tuple[str, ...], str], ProbeRun] = {}

    # progress -----------------------------------------------------------
    def plan(self, n: int) -> None:
        self.total += n
        self._tick("")

    def _tick(self, label: str, step: int = 0) -> None:
        self.done += step
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done), label)

    def finish(self) -> None:
        """Memoised runs do not tick, so the plan can over-count: close it out."""
        self.total = self.done = max(self.total, self.done)
        self._tick("done")

    # rendering ----------------------------------------------------------
    def chat(self, probe: Probe, drop: tuple[str, ...]) -> tuple[list[dict[str, str]], str]:
        key = (probe.id, drop)
        if key not in self._renders:
            system = None if drop == NO_SYSTEM else self.doc.render_without(drop)
            msgs = build_messages(system, probe.messages, self.empty_system)
            self._renders[key] = (msgs, render_chat(self.tok, msgs, add_generation_prompt=True))
        return self._renders[key]

    def tokens(self, rendered: str) -> int:
        h = hashlib.sha256(rendered.encode("utf-8")).hexdigest()
        if h not in self._input_tokens:
            self._input_tokens[h] = count_tokens(self.tok, rendered)
        return self._input_tokens[h]

    def _gen_key(self, who: str, probe: Probe, rendered: str) -> dict[str, Any]:
        return {"op": "generate", "model": self.runners[who].model_id,
                "render": hashlib.sha256(rendered.encode("utf-8")).hexdigest(), "probe": probe.id,
                "messages": probe.messages_hash, "max_new_tokens": self.max_new_tokens}

    def _judge(self, probe: Probe, answer: str, rendered: str) -> ProbeRun:
        check = run_checks(probe, answer, self.regex_timeout)
        failures = list(check.failures)
        parroted = parroted_span(answer, self.doc.text, self.allowed)
        if parroted is not None:
            failures.append(f"parrots the prompt: {parroted!r}")
        loop = repetition(answer)
        if loop is not None:
            failures.append(f"repeats itself: {loop}")
        return ProbeRun(probe.id, probe.section, answer, not failures, tuple(failures), self.tokens(rendered),
                        parroted)

    # model runs ---------------------------------------------------------
    def run_all(self, who: str, drop: Iterable[str], probes: Sequence[Probe]) -> list[ProbeRun]:
        """Every probe answered by ``who`` under the variant ``drop`` (generated in one batch)."""
        dropt = tuple(drop) if tuple(drop) == NO_SYSTEM else tuple(sorted(drop))
        missing: list[tuple[Probe, list[dict[str, str]], str, dict[str, Any]]] = []
        for probe in probes:
            if (who, dropt, probe.id) in self._runs:
                continue
            msgs, rendered = self.chat(probe, dropt)
            key = self._gen_key(who, probe, rendered)
            answer = self.cache.get(key)
            if isinstance(answer, str):
                self._runs[(who, dropt, probe.id)] = self._judge(probe, answer, rendered)
                self._tick(f"{who} {_label(dropt)}: {probe.id}", 1)
            else:
                missing.append((probe, msgs, rendered, key))
        if missing:
            answers = generate_many(self.runners[who], [m[1] for m in missing], self.max_new_tokens)
            for (probe, _, rendered, key), answer in zip(missing, answers, strict=True):
                self.cache.put(key, answer)
                self._runs[(who, dropt, probe.id)] = self._judge(probe, answer, rendered)
            self._tick(f"{who} {_label(dropt)}: {len(missing)} probes", len(missing))
        return [self._runs[(who, dropt, p.id)] for p in probes]

    def kls(self, probes: Sequence[Probe], teachers: dict[str, str],
            variants: Sequence[tuple[str, tuple[str, ...]]],
            ref_drop: tuple[str, ...] = (), ref_model: str = "base",
            ) -> dict[tuple[str, tuple[str, ...]], list[float | None]]:
        """KL(reference || variant) per probe on its teacher answer, for each (model, variant).

        ``teachers[probe.id]`` is the answer the KL is teacher-forced on; probes
        without one are skipped (None). The reference is ``ref_model`` under
        ``ref_drop`` (the base with the full prompt by default); its log-probs are
        computed at most once per probe.
        """
        out: dict[tuple[str, tuple[str, ...]], list[float | None]] = {v: [None] * len(probes) for v in variants}
        ref_lp: dict[int, np.ndarray] = {}
        todo: dict[tuple[str, tuple[str, ...]], list[tuple[int, dict[str, Any]]]] = {v: [] for v in variants}
        for i, probe in enumerate(probes):
            teacher = teachers.get(probe.id)
            if teacher is None:
                continue
            _, ref_render = self.chat(probe, ref_drop)
            answer_hash = hashlib.sha256(teacher.encode("utf-8")).hexdigest()
            for who, drop in variants:
                _, rendered = self.chat(probe, drop)
                key = {"op": "kl", "ref": self._gen_key(ref_model, probe, ref_render),
                       "other": self._gen_key(who, probe, rendered), "answer": answer_hash}
                value = self.cache.get(key)
                if value is None:
                    todo[(who, drop)].append((i, key))
                else:
                    out[(who, drop)][i] = math.inf if value.get("inf") else value.get("kl")
                    self._tick(f"KL {who} {_label(drop)}: {probe.id}", 1)
        needed = sorted({i for items in todo.values() for i, _ in items})
        if needed:
            pairs = [(self.chat(probes[i], ref_drop)[0], teachers[probes[i].id]) for i in needed]
            for i, lp in zip(needed, answer_logprobs_many(self.runners[ref_model], pairs), strict=True):
                ref_lp[i] = lp
        for (who, drop), items in todo.items():
            if not items:
                continue
            pairs = [(self.chat(probes[i], drop)[0], teachers[probes[i].id]) for i, _ in items]
            for (i, key), lp in zip(items, answer_logprobs_many(self.runners[who], pairs), strict=True):
                kl = mean_kl(ref_lp[i], lp)
                value = {"kl": None if kl is None or math.isinf(kl) else kl,
                         "inf": kl is not None and math.isinf(kl)}
                self.cache.put(key, value)
                out[(who, drop)][i] = math.inf if value["inf"] else value["kl"]
            self._tick(f"KL {who} {_label(drop)}: {len(items)} probes", len(items))
        return out
