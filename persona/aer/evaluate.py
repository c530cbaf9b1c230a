"""The AER evaluation: which prompt sections can a recipe's weights replace?

For every alignment section S that has probes, a 2x2 grid on S's probes
(greedy decoding, see ``persona.aer.grid``):

=====================  ==================  =====================
                        full prompt         prompt without S
=====================  ==================  =====================
base model              reference           does S matter at all?
recipe model            (regression check)  can the recipe drop S?
=====================  ==================  =====================

plus teacher-forced KL: KL(base with S || base without S), what S does in the
prompt, and KL(recipe with S || recipe without S), what S still does once the
recipe carries it; their ratio is the normalised KL (0: removing S no longer
moves the recipe; 1: it moves it as much as it moves the base). Both KLs are
taken on the same answers, ones that show S's behaviour: a probe's curated
``reference``, else the reference's greedy answer when it passes the probe,
else the recipe's (with the full prompt) when that passes. Failing answers are
not the behaviour.

Why the recipe is compared with itself and not with the prompted base: a
recipe carries several behaviours, and the others rightly move it away from the
base (a style vector makes every answer open with "Howdy!", which the prompted
base never does), so KL to the base conflates sections; and a vector distilled
to follow S *better* than its prompted teacher (see ``persona.train.teacher``)
would be penalised for leaving the teacher's misses behind. What DROP has to
show is that S has become redundant in the recipe's context.

Verdicts, in the order they are decided:

* UNTESTED: S has no probes; or removing S from the base changes neither the
  pass rate nor the KL and the recipe without S does no better than the
  reference: nothing here says whether S matters, so it is never dropped.
* LEAK: the prompt without S still gives S away (one of S's names or quoted
  phrases, or a ``must_match`` pattern of its probes, occurs in it: see
  ``persona.aer.lint``). The probes could be passed by copying; never dropped.
* TOO FEW: fewer than ``min_probes`` usable probes (probes that nearly repeat
  a training prompt of the recipe's vectors are left out): never dropped.
* DROP: the recipe without S passes within ``tolerance`` of the reference, and
  its normalised KL is at most ``max_kl_ratio`` (when there is KL evidence and
  S moves the reference's distribution by more than ``kl_floor``).
* KEEP otherwise, with the reason. Task sections are never candidates.

Damage. Next to the verdicts, a general-capability check: shipped general
questions with checks (``persona/aer/data/general.yaml``), asked with no system
prompt, base against recipe, plus the KL from the base to the recipe on the
base's own answers to them (neutral prompts). A recipe whose pass rate falls by
more than ``damage_tolerance`` or whose neutral KL exceeds ``max_neutral_kl``
gets a DAMAGE note and no DROP anywhere.

Parroting and looping: an answer that recites the prompt's instructions
(``persona.aer.parroting``) or repeats itself (``persona.aer.repetition``)
fails its probe, whatever its regexes say.

DROP candidates are then removed greedily, largest marginal token saving
first; each addition is re-checked together with the ones already accepted on
every section's usable probes, so dropping sections jointly cannot quietly
break a section that survived on its own. A section's probes must stay within
tolerance of the reference if it is dropped, and must not fall below what the
recipe did with the full prompt if it is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from persona.aer import derive
from persona.aer.grid import (
    NO_SYSTEM,
    Grid,
    ProbeRun,
    Progress,
    RunCache,
    mean_kl,
    pass_rate,
)
from persona.aer.lint import MIN_PROBES, ProbeLint, lint_probes
from persona.aer.overlap import TrainingPrompts
from persona.aer.probes import REGEX_TIMEOUT_S, Probe, probes_by_section
from persona.aer.runner import ModelRunner
from persona.aer.sections import PromptDoc
from persona.aer.tokens import EmptySystem, TokenReport, aer, attribute_tokens, token_report
from persona.errors import InvalidInput

Verdict = Literal["DROP", "KEEP", "UNTESTED", "LEAK", "TOO FEW"]
_EPS = 1e-9

__all__ = ["AerConfig", "AerResult", "DamageResult", "DropStep", "ModeResult", "ProbeRun", "RunCache",
           "SectionResult", "decide", "evaluate_aer", "mean_kl", "pass_rate"]


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
    min_probes: int = MIN_PROBES
    """Fewest usable probes for a DROP."""
    damage_tolerance: float = 0.1
    """DAMAGE when the recipe answers this share fewer general questions than the base."""
    max_neutral_kl: float = 0.5
    """DAMAGE when the mean KL from the base to the recipe on neutral prompts exceeds this (nats/token)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance <= 1.0:
            raise InvalidInput(f"tolerance must be between 0 and 1, got {self.tolerance}")
        if self.max_kl_ratio < 0 or self.kl_floor < 0:
            raise InvalidInput("KL thresholds must not be negative")
        if self.max_new_tokens <= 0:
            raise InvalidInput(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.min_probes < 1:
            raise InvalidInput(f"min_probes must be at least 1, got {self.min_probes}")
        if not 0.0 <= self.damage_tolerance <= 1.0 or self.max_neutral_kl < 0:
            raise InvalidInput("damage thresholds must be a share in [0, 1] and a non-negative KL")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SectionResult:
    """One section: its tokens, its 2x2 grid on its usable probes, KL, verdict and whether it was dropped."""

    name: str
    kind: str
    kind_source: str
    tokens: int
    saving: int
    probes: int
    usable: int = 0
    ref_pass: float | None = None
    base_without_pass: float | None = None
    recipe_without_pass: float | None = None
    recipe_full_pass: float | None = None
    passed: dict[str, int] = field(default_factory=dict)
    """Counts behind the rates: ref, base_without, recipe_without, recipe_full (of ``usable``)."""
    kl_base_without: float | None = None
    kl_recipe_without: float | None = None
    kl_ratio: float | None = None
    kl_probes: int = 0
    """Answers both KL gaps were measured on (curated references, else passing answers with the full prompt)."""
    verdict: Verdict = "UNTESTED"
    reason: str = ""
    dropped: bool = False
    leaks: tuple[dict[str, Any], ...] = ()
    overlaps: tuple[dict[str, Any], ...] = ()


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


@dataclass(frozen=True)
class DamageResult:
    """The general-capability check: general questions without a system prompt, base vs recipe."""

    questions: int
    base_passed: int
    recipe_passed: int
    neutral_kl: float | None
    damaged: bool
    reason: str
    failures: tuple[str, ...] = ()  # ids of questions the base answers and the recipe no longer does


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
    damage: DamageResult | None = None
    lint: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> SectionResult:
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(name)


# --------------------------------------------------------------------------- verdicts


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _teachers(group: Sequence[Probe], *runs_by_id: dict[str, ProbeRun]) -> dict[str, str]:
    """The answer each KL is teacher-forced on: the probe's curated reference, else the first passing answer.

    Both models' gaps are measured on the same answers, so their ratio compares like with
    like; the recipe's passing answers count too, as the prompted base of a small model
    often shows S only rarely (3 of 21 identity questions for SmolLM2), too few to measure on.
    """
    out = {}
    for p in group:
        if p.reference is not None:
            out[p.id] = p.reference
            continue
        for runs in runs_by_id:
            run = runs[p.id]
            if run.passed and run.answer.strip():
                out[p.id] = run.answer
                break
    return out


def decide(
    name: str,
    ref_pass: float,
    base_without_pass: float,
    recipe_without_pass: float,
    kl_base_without: float | None,
    kl_recipe_without: float | None,
    config: AerConfig,
) -> tuple[Verdict, str, float | None]:
    """DROP, KEEP or UNTESTED, the reason, and the normalised KL, from one section's grid."""
    pass_changed = abs(ref_pass - base_without_pass) > _EPS
    kl_changed = kl_base_without is not None and kl_base_without > config.kl_floor
    recipe_better = recipe_without_pass > ref_pass + _EPS
    warn = ""
    if ref_pass < 1.0 - config.tolerance - _EPS:
        warn = f"; note: the reference itself passes only {_pct(ref_pass)} of these probes"
    if not pass_changed and not kl_changed and not recipe_better:
        kl_txt = "n/a" if kl_base_without is None else f"{kl_base_without:.3g} <= {config.kl_floor:g}"
        return (
            "UNTESTED",
            f"removing {name} from the base changes neither the pass rate ({_pct(ref_pass)}) "
            f"nor the KL ({kl_txt}), and the recipe does no better: the probes do not exercise {name}{warn}",
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
    elif kl_base_without is None:
        kl_ok = True
        kl_txt = "no KL evidence (the base with the full prompt passes none of these probes)"
    elif kl_recipe_without is None:
        kl_ok = True
        kl_txt = "no KL evidence for the recipe (with the full prompt it passes none of these probes)"
    else:
        kl_ok = True
        kl_txt = (f"{name} barely moves the base's distribution on its passing answers "
                  f"(KL {kl_base_without:.3g} <= {config.kl_floor:g}): judged on pass rates")
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


def judge_damage(base_runs: Sequence[ProbeRun], recipe_runs: Sequence[ProbeRun], neutral_kl: float | None,
                 config: AerConfig) -> DamageResult:
    n = len(base_runs)
    b = sum(r.passed for r in base_runs)
    r = sum(x.passed for x in recipe_runs)
    lost = tuple(x.probe_id for x, y in zip(base_runs, recipe_runs, strict=True) if x.passed and not y.passed)
    why = []
    drop = (b - r) / n if n else 0.0
    if drop > config.damage_tolerance + _EPS:
        why.append(f"the recipe answers {r}/{n} general questions, the base {b}/{n} "
                   f"(a drop of {drop:.0%} > {config.damage_tolerance:.0%})")
    if neutral_kl is not None and neutral_kl > config.max_neutral_kl + _EPS:
        why.append(f"KL from the base to the recipe on neutral prompts {neutral_kl:.3f} > {config.max_neutral_kl:g}")
    if why:
        return DamageResult(n, b, r, neutral_kl, True, "; ".join(why), lost)
    kl_txt = "n/a" if neutral_kl is None else f"{neutral_kl:.3f}"
    return DamageResult(n, b, r, neutral_kl, False,
                        f"general questions: base {b}/{n}, recipe {r}/{n}; neutral KL {kl_txt}", lost)


# --------------------------------------------------------------------------- evaluation


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
    training: TrainingPrompts | None = None,
    general: Sequence[Probe] | None = None,
) -> AerResult:
    """Run the full AER evaluation of ``recipe`` against ``base`` (see the module docstring).

    ``tokenizer`` is the base's fast tokenizer with its chat template (token
    accounting and cache keys); ``context_window`` is C_total; ``cache``
    persists model runs (in memory only when None); ``progress(done, total,
    label)`` is called as model runs finish. ``training`` holds the recipe's
    vectors' training prompts (the overlap check); ``general`` the
    general-capability questions (the damage check; None skips it).
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
    lint: ProbeLint = lint_probes(prompt, probes, training)
    excluded = lint.overlapping_ids
    usable_probes = [p for p in probes if p.id not in excluded]
    allowed = [phrase for s in prompt.sections for phrase in derive.quoted_phrases(s.text)]
    grid = Grid({"base": base, "recipe": recipe}, prompt, tokenizer, cfg.max_new_tokens, cfg.empty_system, cache,
                progress, cfg.regex_timeout, allowed)
    by_section = probes_by_section(usable_probes)
    all_by_section = probes_by_section(probes)
    align = [s for s in prompt.sections if s.is_alignment]
    graded = [s for s in align if by_section.get(s.name)]
    n = len(usable_probes)
    grid.plan(2 * len(probes) + sum(4 * len(by_section[s.name]) for s in graded) + 2 * n
              + (3 * len(general) if general else 0))

    ref_runs = grid.run_all("base", (), probes)
    rec_full_runs = grid.run_all("recipe", (), probes)
    ref_by_id = {r.probe_id: r for r in ref_runs}
    rec_full_by_id = {r.probe_id: r for r in rec_full_runs}

    def rate_by_section(runs: Sequence[ProbeRun]) -> dict[str, float]:
        out: dict[str, float] = {}
        for sec, group in by_section.items():
            ids = {p.id for p in group}
            rate = pass_rate([r for r in runs if r.probe_id in ids])
            assert rate is not None
            out[sec] = rate
        return out

    usable_ids = {p.id for p in usable_probes}
    ref_rate = rate_by_section([r for r in ref_runs if r.probe_id in usable_ids])
    rec_full_rate = rate_by_section([r for r in rec_full_runs if r.probe_id in usable_ids])

    damage: DamageResult | None = None
    if general:
        base_general = grid.run_all("base", NO_SYSTEM, general)
        recipe_general = grid.run_all("recipe", NO_SYSTEM, general)
        teachers = {r.probe_id: r.answer for r in base_general if r.answer.strip()}
        kls = grid.kls(list(general), teachers, [("recipe", NO_SYSTEM)], ref_drop=NO_SYSTEM)[("recipe", NO_SYSTEM)]
        damage = judge_damage(base_general, recipe_general, _mean(kls), cfg)

    results: dict[str, SectionResult] = {}
    for s in prompt.sections:
        st = report.section(s.name)
        group = by_section.get(s.name, [])
        common: dict[str, Any] = dict(
            name=s.name, kind=s.kind, kind_source=s.kind_source, tokens=st.tokens, saving=st.saving,
            probes=len(all_by_section.get(s.name, [])), usable=len(group),
            ref_pass=ref_rate.get(s.name), recipe_full_pass=rec_full_rate.get(s.name),
        )
        if not s.is_alignment:
            results[s.name] = SectionResult(**common, verdict="KEEP",
                                            reason=f"kind {s.kind}: task context, not alignment; never dropped")
            continue
        lint_s = lint.sections.get(s.name)
        if lint_s is not None:
            common["leaks"] = tuple(f.to_json() for f in lint_s.leaks)
            common["overlaps"] = tuple(f.to_json() for f in lint_s.overlaps)
        if not group:
            why = (f"no probes exercise {s.name}: add probes with section: {s.name}" if not common["probes"]
                   else f"all {common['probes']} probes of {s.name} nearly repeat training prompts")
            results[s.name] = SectionResult(**common, verdict="UNTESTED", reason=why)
            continue
        drop = (s.name,)
        base_wo = grid.run_all("base", drop, group)
        rec_wo = grid.run_all("recipe", drop, group)
        # How far removing S moves each model from itself with the full prompt, on the with-S
        # model's own passing answers (or the probe's curated reference): the base's gap is what
        # S does in the prompt, the recipe's is what is left once S is in the weights.
        teachers = _teachers(group, ref_by_id, rec_full_by_id)
        kl_base = _mean(grid.kls(group, teachers, [("base", drop)])[("base", drop)])
        kl_rec = _mean(grid.kls(group, teachers, [("recipe", drop)], ref_model="recipe")[("recipe", drop)])
        rp, bp, rw = ref_rate[s.name], pass_rate(base_wo), pass_rate(rec_wo)
        assert bp is not None and rw is not None
        ids = {p.id for p in group}
        passed = {"ref": sum(r.passed for r in ref_runs if r.probe_id in ids),
                  "base_without": sum(r.passed for r in base_wo),
                  "recipe_without": sum(r.passed for r in rec_wo),
                  "recipe_full": sum(r.passed for r in rec_full_runs if r.probe_id in ids)}
        verdict, reason, ratio = decide(s.name, rp, bp, rw, kl_base, kl_rec, cfg)
        if lint_s is not None and lint_s.leaks:
            verdict = "LEAK"
            reason = (f"the prompt without {s.name} gives it away: "
                      + "; ".join(f.describe() for f in lint_s.leaks) + f" (alone: {reason})")
        elif len(group) < cfg.min_probes:
            verdict = "TOO FEW"
            reason = (f"only {len(group)} usable probes (at least {cfg.min_probes} are needed for a DROP"
                      + (f"; {len(lint_s.overlaps)} left out as near-repeats of training prompts"
                         if lint_s is not None and lint_s.overlaps else "") + f"); {reason}")
        elif verdict == "DROP" and damage is not None and damage.damaged:
            verdict = "KEEP"
            reason = f"DAMAGE: {damage.reason} (alone: {reason})"
        results[s.name] = SectionResult(
            **common, base_without_pass=bp, recipe_without_pass=rw, passed=passed,
            kl_base_without=kl_base, kl_recipe_without=kl_rec, kl_ratio=ratio, kl_probes=len(teachers),
            verdict=verdict, reason=reason,
        )

    # greedy drop, largest marginal saving first, each step re-checked on all usable probes
    order = {s.name: i for i, s in enumerate(prompt.sections)}
    candidates = sorted((r for r in results.values() if r.verdict == "DROP"),
                        key=lambda r: (-r.saving, -r.tokens, order[r.name]))
    accepted: list[str] = []
    steps: list[DropStep] = []
    for cand in candidates:
        trial = tuple(accepted + [cand.name])
        grid.plan(n)
        rates = rate_by_section(grid.run_all("recipe", trial, usable_probes))
        damaged = []
        for sec, rate in rates.items():
            floor = ref_rate[sec] if sec in trial else min(ref_rate[sec], rec_full_rate[sec])
            if rate < floor - cfg.tolerance - _EPS:
                damaged.append(f"{sec} {_pct(rate)} < {_pct(floor)}")
        if damaged:
            steps.append(DropStep(cand.name, trial, False,
                                  f"dropping {'+'.join(trial)} together breaks: {', '.join(damaged)}", rates))
        else:
            accepted.append(cand.name)
            steps.append(DropStep(cand.name, trial, True, f"{'+'.join(trial)} pass together", rates))
    for step in steps:
        r = results[step.section]
        if step.accepted:
            results[step.section] = replace(r, dropped=True)
        else:
            results[step.section] = replace(
                r, verdict="KEEP", reason=f"collateral damage: {step.reason} (alone: {r.reason})")

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
        runs = grid.run_all(who, drop, usable_probes)
        runs_out[name] = runs
        system_tokens = attribute_tokens(tokenizer, prompt, drop, empty_system=cfg.empty_system).total
        modes.append(ModeResult(name, who, tuple(sorted(drop)), sum(r.passed for r in runs), len(runs),
                                sum(r.input_tokens for r in runs) / len(runs), system_tokens))

    grid.finish()
    c_before = report.c_alignment
    after_attr = attribute_tokens(tokenizer, prompt, final, empty_system=cfg.empty_system)
    kinds = {s.name: s for s in prompt.sections}
    c_after = sum(t for name, t in after_attr.sections.items() if kinds[name].is_alignment)
    notes = list(report.notes) + list(lint.notes)
    untested = [r.name for r in results.values() if r.verdict == "UNTESTED"]
    if untested:
        notes.append(f"untested (probes do not exercise them): {', '.join(untested)}")
    if excluded:
        notes.append(f"{len(excluded)} probe(s) left out as near-repeats of training prompts: "
                     f"{', '.join(sorted(excluded))}")
    regressed = [sec for sec in ref_rate if rec_full_rate[sec] < ref_rate[sec] - cfg.tolerance - _EPS]
    if regressed:
        notes.append(f"the recipe regresses even with the full prompt on: {', '.join(regressed)}")
    parroting = sum(r.parroted is not None for runs in runs_out.values() for r in runs)
    if parroting:
        notes.append(f"{parroting} answer(s) in the modes table recite the prompt (counted as failed)")
    if damage is not None:
        notes.append(("DAMAGE: " if damage.damaged else "general capability: ") + damage.reason)
    return AerResult(
        base_id=base.model_id, recipe_id=recipe.model_id, prompt_source=prompt.source, c_total=context_window,
        tokens=report, sections=[results[s.name] for s in prompt.sections], drop_steps=steps,
        dropped=list(final), c_alignment_before=c_before, c_alignment_after=c_after,
        aer_before=aer(c_before, context_window), aer_after=aer(c_after, context_window), modes=modes,
        config=cfg, runs=runs_out, notes=notes, cache_hits=cache.hits, cache_misses=cache.misses,
        damage=damage, lint=lint.to_json(),
    )
