"""The AER evaluation: which prompt sections can a recipe's weights replace?

For every alignment section S that has probes, a 2x2 grid on S's probes
(greedy decoding):

=====================  ==================  =====================
                        full prompt         prompt without S
=====================  ==================  =====================
base model              reference           does S matter at all?
recipe model            (regression check)  can the recipe drop S?
=====================  ==================  =====================

plus teacher-forced KL on the reference answer's tokens: KL(reference || base
without S), the gap S closes in the base, and KL(reference || recipe without
S), the gap left once the recipe replaces S. Their ratio is the normalised KL:
0 means the recipe reproduces the reference's distribution without S, 1 means
it is no closer than the base without S.

Verdicts (:func:`decide`):

* UNTESTED: removing S from the base changes neither the pass rate nor the KL
  (KL at most ``kl_floor`` nats/token), or S has no probes: nothing here says
  whether S matters, so it is never dropped.
* DROP: the recipe without S passes within ``tolerance`` of the reference and
  its normalised KL is at most ``max_kl_ratio`` (when the base's KL gap is
  below the floor, the recipe's own KL must be below the floor instead).
* KEEP otherwise, with the reason. Task sections are never candidates.

DROP candidates are then removed greedily, largest marginal token saving
first; each addition is re-checked together with the ones already accepted on
*every* section's probes, so dropping sections jointly cannot quietly break a
section that survived on its own. A section's probes must stay within
tolerance of the reference if it is dropped, and must not fall below what the
recipe did with the full prompt if it is kept. The last accepted set is the
final drop set, re-checked as a whole by construction.

The teacher-forced answer is the probe's ``reference`` when given (a curated
answer), else the base's greedy answer with the full prompt.

Model runs are cached by (model id, sha256 of the exact rendered input, probe
id and messages hash, max_new_tokens) and KL values by both sides' keys plus
the answer's hash, in memory and optionally on disk, so a re-run costs only
what changed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from persona.aer.probes import REGEX_TIMEOUT_S, Probe, probes_by_section, run_checks
from persona.aer.runner import ModelRunner
from persona.aer.sections import PromptDoc
from persona.aer.tokens import (
    EmptySystem,
    TokenReport,
    aer,
    attribute_tokens,
    build_messages,
    count_tokens,
    render_chat,
    token_report,
)
from persona.errors import Incompatible, InvalidInput
from persona.fsutil import atomic_write_bytes

Verdict = Literal["DROP", "KEEP", "UNTESTED"]
Progress = Callable[[int, int, str], None]
_EPS = 1e-9


@dataclass(frozen=True)
class AerConfig:
    """Thresholds of the verdicts and how models are run."""

    tolerance: float = 0.05
    """Pass rates within this of the reference count as equal."""
    max_kl_ratio: float = 0.5
    """DROP needs normalised KL at most this: the recipe closes at least half the gap."""
    kl_floor: float = 0.01
    """Mean KL (nats/token) at or below this counts as no change."""
    max_new_tokens: int = 64
    empty_system: EmptySystem = "omit"
    regex_timeout: float = REGEX_TIMEOUT_S

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance <= 1.0:
            raise InvalidInput(f"tolerance must be between 0 and 1, got {self.tolerance}")
        if self.max_kl_ratio < 0 or self.kl_floor < 0:
            raise InvalidInput("KL thresholds must not be negative")
        if self.max_new_tokens <= 0:
            raise InvalidInput(f"max_new_tokens must be positive, got {self.max_new_tokens}")


# --------------------------------------------------------------------------- cache


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


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ProbeRun:
    """One probe, one model, one prompt variant."""

    probe_id: str
    section: str
    answer: str
    passed: bool
    failures: tuple[str, ...]
    input_tokens: int


def pass_rate(runs: Sequence[ProbeRun]) -> float | None:
    return sum(r.passed for r in runs) / len(runs) if runs else None


@dataclass(frozen=True)
class SectionResult:
    """One section: its tokens, its 2x2 grid, KL, verdict and whether it was dropped."""

    name: str
    kind: str
    kind_source: str
    tokens: int
    saving: int
    probes: int
    ref_pass: float | None = None
    base_without_pass: float | None = None
    recipe_without_pass: float | None = None
    recipe_full_pass: float | None = None
    kl_base_without: float | None = None
    kl_recipe_without: float | None = None
    kl_ratio: float | None = None
    verdict: Verdict = "UNTESTED"
    reason: str = ""
    dropped: bool = False


@dataclass(frozen=True)
class DropStep:
    """One greedy step: trying ``section`` on top of the sections already accepted."""

    section: str
    trial: tuple[str, ...]
    accepted: bool
    reason: str
    pass_rates: dict[str, float]


@dataclass(frozen=True)
class ModeResult:
    """A row of the modes report, like a memory benchmark's: one way of prompting."""

    name: str
    model: Literal["base", "recipe"]
    dropped: tuple[str, ...]
    passed: int
    probes: int
    input_tokens: float
    """Mean input tokens per probe (rendered chat incl. the probe's turns)."""
    system_tokens: int
    """Tokens of the system prompt alone, rendered as a lone system message."""

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.probes if self.probes else None


@dataclass
class AerResult:
    """Everything ``persona aer`` reports and stores for one (base, recipe) pair."""

    base_id: str
    recipe_id: str
    prompt_source: str
    c_total: int
    tokens: TokenReport
    sections: list[SectionResult]
    drop_steps: list[DropStep]
    dropped: list[str]
    c_alignment_before: int
    c_alignment_after: int
    aer_before: float
    aer_after: float
    modes: list[ModeResult]
    config: AerConfig
    runs: dict[str, list[ProbeRun]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cache_hits: int = 0
    cache_misses: int = 0

    def section(self, name: str) -> SectionResult:
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(name)


# --------------------------------------------------------------------------- math


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


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def decide(
    name: str,
    ref_pass: float,
    base_without_pass: float,
    recipe_without_pass: float,
    kl_base_without: float | None,
    kl_recipe_without: float | None,
    config: AerConfig,
) -> tuple[Verdict, str, float | None]:
    """Verdict, reason and normalised KL for one section (see the module docstring)."""
    pass_changed = abs(ref_pass - base_without_pass) > _EPS
    kl_changed = kl_base_without is not None and kl_base_without > config.kl_floor
    warn = ""
    if ref_pass < 1.0 - config.tolerance - _EPS:
        warn = f"; note: the reference itself passes only {_pct(ref_pass)} of these probes"
    if not pass_changed and not kl_changed:
        kl_txt = (
            "n/a" if kl_base_without is None else f"{kl_base_without:.3g} <= {config.kl_floor:g}"
        )
        return (
            "UNTESTED",
            f"removing {name} from the base changes neither the pass rate ({_pct(ref_pass)}) "
            f"nor the KL ({kl_txt}): the probes do not exercise {name}{warn}",
            None,
        )
    ratio: float | None = None
    if kl_changed and kl_recipe_without is not None:
        assert kl_base_without is not None
        ratio = kl_recipe_without / kl_base_without
    pass_ok = recipe_without_pass >= ref_pass - config.tolerance - _EPS
    if ratio is not None:
        kl_ok = ratio <= config.max_kl_ratio + _EPS
        kl_txt = f"normalised KL {ratio:.2f} {'<=' if kl_ok else '>'} {config.max_kl_ratio:g}"
    elif kl_recipe_without is None:
        kl_ok = True
        kl_txt = "no KL (empty reference answers)"
    else:
        kl_ok = kl_recipe_without <= config.kl_floor + _EPS
        kl_txt = f"KL {kl_recipe_without:.3g} {'<=' if kl_ok else '>'} floor {config.kl_floor:g}"
    pass_txt = (
        f"recipe without {name} passes {_pct(recipe_without_pass)} vs reference {_pct(ref_pass)} "
        f"(base without it {_pct(base_without_pass)}, tolerance {_pct(config.tolerance)})"
    )
    if pass_ok and kl_ok:
        return "DROP", f"{pass_txt}; {kl_txt}{warn}", ratio
    why = []
    if not pass_ok:
        why.append(pass_txt)
    if not kl_ok:
        why.append(kl_txt)
    return "KEEP", "; ".join(why) + warn, ratio


# --------------------------------------------------------------------------- evaluator


class _Evaluator:
    def __init__(
        self,
        base: ModelRunner,
        recipe: ModelRunner,
        doc: PromptDoc,
        probes: Sequence[Probe],
        tokenizer: Any,
        config: AerConfig,
        cache: RunCache,
        progress: Progress | None,
    ) -> None:
        self.runners = {"base": base, "recipe": recipe}
        self.doc = doc
        self.probes = list(probes)
        self.tok = tokenizer
        self.cfg = config
        self.cache = cache
        self.progress = progress
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
    def _chat(self, probe: Probe, drop: tuple[str, ...]) -> tuple[list[dict[str, str]], str]:
        key = (probe.id, drop)
        if key not in self._renders:
            system = self.doc.render_without(drop)
            msgs = build_messages(system, probe.messages, self.cfg.empty_system)
            self._renders[key] = (msgs, render_chat(self.tok, msgs, add_generation_prompt=True))
        return self._renders[key]

    def _tokens(self, rendered: str) -> int:
        h = hashlib.sha256(rendered.encode("utf-8")).hexdigest()
        if h not in self._input_tokens:
            self._input_tokens[h] = count_tokens(self.tok, rendered)
        return self._input_tokens[h]

    def _gen_key(self, who: str, probe: Probe, rendered: str) -> dict[str, Any]:
        return {
            "op": "generate",
            "model": self.runners[who].model_id,
            "render": hashlib.sha256(rendered.encode("utf-8")).hexdigest(),
            "probe": probe.id,
            "messages": probe.messages_hash,
            "max_new_tokens": self.cfg.max_new_tokens,
        }

    # model runs ---------------------------------------------------------
    def run(self, who: str, drop: Iterable[str], probe: Probe) -> ProbeRun:
        dropt = tuple(sorted(drop))
        memo = (who, dropt, probe.id)
        if memo in self._runs:
            return self._runs[memo]
        msgs, rendered = self._chat(probe, dropt)
        key = self._gen_key(who, probe, rendered)
        answer = self.cache.get(key)
        if not isinstance(answer, str):
            answer = self.runners[who].generate(msgs, self.cfg.max_new_tokens)
            self.cache.put(key, answer)
        check = run_checks(probe, answer, self.cfg.regex_timeout)
        result = ProbeRun(
            probe.id, probe.section, answer, check.passed, check.failures, self._tokens(rendered)
        )
        self._runs[memo] = result
        label = f"{who} {'full prompt' if not dropt else 'without ' + '+'.join(dropt)}: {probe.id}"
        self._tick(label, 1)
        return result

    def run_all(self, who: str, drop: Iterable[str], probes: Sequence[Probe]) -> list[ProbeRun]:
        return [self.run(who, drop, p) for p in probes]

    def kls(
        self, probe: Probe, variants: Sequence[tuple[str, tuple[str, ...]]]
    ) -> list[float | None]:
        """KL(reference || each variant) on the teacher answer, computing the
        reference's log-probs at most once for all of them."""
        teacher = (
            probe.reference if probe.reference is not None else self.run("base", (), probe).answer
        )
        ref_msgs, ref_render = self._chat(probe, ())
        answer_hash = hashlib.sha256(teacher.encode("utf-8")).hexdigest()
        ref_lp: np.ndarray | None = None
        out: list[float | None] = []
        for who, drop in variants:
            msgs, rendered = self._chat(probe, drop)
            key = {
                "op": "kl",
                "ref": self._gen_key("base", probe, ref_render),
                "other": self._gen_key(who, probe, rendered),
                "answer": answer_hash,
            }
            value = self.cache.get(key)
            if value is None:
                if ref_lp is None:
                    ref_lp = self.runners["base"].answer_logprobs(ref_msgs, teacher)
                other = self.runners[who].answer_logprobs(msgs, teacher)
                kl = mean_kl(ref_lp, other)
                value = {
                    "kl": None if kl is None or math.isinf(kl) else kl,
                    "inf": kl is not None and math.isinf(kl),
                }
                self.cache.put(key, value)
            out.append(math.inf if value.get("inf") else value.get("kl"))
            self._tick(f"KL {who} without {'+'.join(drop)}: {probe.id}", 1)
        return out


def evaluate_aer(
    *,
    base: ModelRunner,
    recipe: ModelRunner,
    prompt: PromptDoc,
    probes: Sequence[Probe],
    tokenizer: Any,
    context_window: int,
    config: AerConfig | None = None,
    cache: RunCache | None = None,
    progress: Progress | None = None,
) -> AerResult:
    """Run the full AER evaluation of ``recipe`` against ``base`` (see the module docstring).

    ``tokenizer`` is the base's fast tokenizer with its chat template (token
    accounting and cache keys); ``context_window`` is C_total (see
    :func:`persona.aer.tokens.resolve_context_window`); ``cache`` persists
    model runs (in memory only when None); ``progress(done, total, label)`` is
    called after every model call, cached or not (``total`` may grow when the
    greedy phase starts).
    """
    cfg = config or AerConfig()
    cache = cache if cache is not None else RunCache()
    names = set(prompt.names)
    bad = [p for p in probes if p.section not in names]
    if bad:
        raise InvalidInput(
            f"probe {bad[0].id!r}: field 'section': unknown section {bad[0].section!r}",
            f"sections are: {', '.join(prompt.names)}",
        )
    if not probes:
        raise InvalidInput("no probes", "add probes for the sections to evaluate")
    report = token_report(tokenizer, prompt, context_window, empty_system=cfg.empty_system)
    ev = _Evaluator(base, recipe, prompt, probes, tokenizer, cfg, cache, progress)
    by_section = probes_by_section(probes)
    align = [s for s in prompt.sections if s.is_alignment]
    graded = [s for s in align if by_section.get(s.name)]
    n = len(probes)
    ev.plan(2 * n + sum(4 * len(by_section[s.name]) for s in graded) + 2 * n)

    ref_runs = ev.run_all("base", (), probes)
    rec_full_runs = ev.run_all("recipe", (), probes)

    def rate_by_section(runs: Sequence[ProbeRun]) -> dict[str, float]:
        out: dict[str, float] = {}
        for sec, group in probes_by_section(probes).items():
            ids = {p.id for p in group}
            rate = pass_rate([r for r in runs if r.probe_id in ids])
            assert rate is not None
            out[sec] = rate
        return out

    ref_rate = rate_by_section(ref_runs)
    rec_full_rate = rate_by_section(rec_full_runs)

    results: dict[str, SectionResult] = {}
    for s in prompt.sections:
        st = report.section(s.name)
        common = dict(
            name=s.name,
            kind=s.kind,
            kind_source=s.kind_source,
            tokens=st.tokens,
            saving=st.saving,
            probes=len(by_section.get(s.name, [])),
            ref_pass=ref_rate.get(s.name),
            recipe_full_pass=rec_full_rate.get(s.name),
        )
        if not s.is_alignment:
            results[s.name] = SectionResult(
                **common,
                verdict="KEEP",
                reason=f"kind {s.kind}: task context, not alignment; never dropped",
            )
            continue
        group = by_section.get(s.name, [])
        if not group:
            results[s.name] = SectionResult(
                **common,
                verdict="UNTESTED",
                reason=f"no probes exercise {s.name}: add probes with section: {s.name}",
            )
            continue
        drop = (s.name,)
        base_wo = ev.run_all("base", drop, group)
        rec_wo = ev.run_all("recipe", drop, group)
        kl_pairs = [ev.kls(p, [("base", drop), ("recipe", drop)]) for p in group]
        kl_base = _mean(k[0] for k in kl_pairs)
        kl_rec = _mean(k[1] for k in kl_pairs)
        rp, bp, rw = ref_rate[s.name], pass_rate(base_wo), pass_rate(rec_wo)
        assert bp is not None and rw is not None
        verdict, reason, ratio = decide(s.name, rp, bp, rw, kl_base, kl_rec, cfg)
        results[s.name] = SectionResult(
            **common,
            base_without_pass=bp,
            recipe_without_pass=rw,
            kl_base_without=kl_base,
            kl_recipe_without=kl_rec,
            kl_ratio=ratio,
            verdict=verdict,
            reason=reason,
        )

    # greedy drop, largest marginal saving first, each step re-checked on all probes
    order = {s.name: i for i, s in enumerate(prompt.sections)}
    candidates = sorted(
        (r for r in results.values() if r.verdict == "DROP"),
        key=lambda r: (-r.saving, -r.tokens, order[r.name]),
    )
    accepted: list[str] = []
    steps: list[DropStep] = []
    for cand in candidates:
        trial = tuple(accepted + [cand.name])
        ev.plan(n)
        runs = ev.run_all("recipe", trial, probes)
        rates = rate_by_section(runs)
        damaged = []
        for sec, rate in rates.items():
            floor = ref_rate[sec] if sec in trial else min(ref_rate[sec], rec_full_rate[sec])
            if rate < floor - cfg.tolerance - _EPS:
                damaged.append(f"{sec} {_pct(rate)} < {_pct(floor)}")
        if damaged:
            reason = f"dropping {'+'.join(trial)} together breaks: {', '.join(damaged)}"
            steps.append(DropStep(cand.name, trial, False, reason, rates))
        else:
            accepted.append(cand.name)
            steps.append(
                DropStep(cand.name, trial, True, f"{'+'.join(trial)} pass together", rates)
            )
    for step in steps:
        r = results[step.section]
        if step.accepted:
            results[step.section] = replace(r, dropped=True)
        else:
            results[step.section] = replace(
                r, verdict="KEEP", reason=f"collateral damage: {step.reason} (alone: {r.reason})"
            )

    final = tuple(accepted)
    align_names = tuple(s.name for s in align)
    modes_spec: list[tuple[str, Literal["base", "recipe"], tuple[str, ...]]] = [
        ("full prompt (ceiling)", "base", ()),
        ("recipe + full prompt", "recipe", ()),
        ("recipe, DROP sections removed", "recipe", final),
        ("recipe, no alignment prompt", "recipe", align_names),
        ("base, no alignment prompt (floor)", "base", align_names),
    ]
    modes: list[ModeResult] = []
    runs_out: dict[str, list[ProbeRun]] = {}
    for name, who, drop in modes_spec:
        runs = ev.run_all(who, drop, probes)
        runs_out[name] = runs
        system_tokens = attribute_tokens(
            tokenizer, prompt, drop, empty_system=cfg.empty_system
        ).total
        modes.append(
            ModeResult(
                name,
                who,
                tuple(sorted(drop)),
                sum(r.passed for r in runs),
                len(runs),
                sum(r.input_tokens for r in runs) / len(runs),
                system_tokens,
            )
        )

    ev.finish()
    c_before = report.c_alignment
    after_attr = attribute_tokens(tokenizer, prompt, final, empty_system=cfg.empty_system)
    kinds = {s.name: s for s in prompt.sections}
    c_after = sum(t for name, t in after_attr.sections.items() if kinds[name].is_alignment)
    notes = list(report.notes)
    untested = [r.name for r in results.values() if r.verdict == "UNTESTED"]
    if untested:
        notes.append(f"untested (probes do not exercise them): {', '.join(untested)}")
    regressed = [
        sec for sec in ref_rate if rec_full_rate[sec] < ref_rate[sec] - cfg.tolerance - _EPS
    ]
    if regressed:
        notes.append(f"the recipe regresses even with the full prompt on: {', '.join(regressed)}")
    return AerResult(
        base_id=base.model_id,
        recipe_id=recipe.model_id,
        prompt_source=prompt.source,
        c_total=context_window,
        tokens=report,
        sections=[results[s.name] for s in prompt.sections],
        drop_steps=steps,
        dropped=list(final),
        c_alignment_before=c_before,
        c_alignment_after=c_after,
        aer_before=aer(c_before, context_window),
        aer_after=aer(c_after, context_window),
        modes=modes,
        config=cfg,
        runs=runs_out,
        notes=notes,
        cache_hits=cache.hits,
        cache_misses=cache.misses,
    )
