"""``persona train NAME --distill PROMPT.md --section S``: a prompt section baked into a LoRA vector.

The steps, each in its own module:

1. prompts (``prompt_pool``): the built-in set plus ``--prompts``; the ones the
   section concerns are *targeted*, a sample of the rest are *anchors*; each is
   put on the training or the held-out side by a hash of its text;
2. checks (``persona.aer.derive``): ``--keep-if``, else what the section's text
   implies (a name, a quoted phrase), and the parroting filter;
3. teacher answers (``teacher``): the base with the whole prompt (plus the
   section repeated beside targeted questions), greedy, then rejection-sampled
   where greedy fails the checks;
4. training (``loop``): the student (base + LoRA, prompt without the section)
   learns the accepted answers; the held-out loss picks the checkpoint;
5. the held-out report: on held-out targeted questions, how often the student
   without the section passes the checks, next to the base without the section
   and the prompted base (the whole prompt, as deployed), and the mean KL to
   the teacher per token. It is stored in the vector's provenance and shown by
   ``persona vector show``.

The defaults below were chosen by measurement on SmolLM2-135M (README,
"Distillation evidence"): the objective, the number of samples and rounds,
the learning rate and the number of passes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona.errors import InvalidInput, PersonaError
from persona.repo import Repository
from persona.store.objects import PROMPTS_FILE

#: Objectives (persona.train.distill).
OBJECTIVES = ("kl", "sft", "kl+sft")
DEFAULT_OBJECTIVE = "kl+sft"
#: Fewer targeted questions with an acceptable teacher answer than this gets a warning.
FEW_ANSWERS = 10
#: Defaults chosen by measurement (see the module docstring).
DISTILL_LR = 2e-3
DISTILL_BATCH_SIZE = 8
DISTILL_STEPS = 40
TEACHER_MAX_NEW_TOKENS = 40
SAMPLES = 4
ROUNDS = 2
VALIDATIONS = 4  # held-out checks per run when --eval-every is not given


@dataclass(frozen=True)
class DistillSettings:
    """Everything about a distillation that is not a generic training option."""

    objective: str = DEFAULT_OBJECTIVE
    keep_if: str | None = None
    builtin_prompts: bool = True
    cue: bool = True
    samples: int = SAMPLES
    rounds: int = ROUNDS
    teacher_max_new_tokens: int = TEACHER_MAX_NEW_TOKENS
    top_k: int = 64
    heldout: float = 0.2
    anchor_ratio: float = 0.5
    max_targeted: int = 96
    eval_pass_rate: bool = False  # also generate on the held-out questions at every validation (costs time)

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InvalidInput(f"unknown --objective {self.objective!r}", f"use {', '.join(OBJECTIVES)}")
        if self.teacher_max_new_tokens < 1:
            raise InvalidInput(f"--teacher-max-new-tokens must be at least 1, got {self.teacher_max_new_tokens}",
                               "e.g. --teacher-max-new-tokens 48")
        if self.top_k < 1:
            raise InvalidInput(f"--top-k must be at least 1, got {self.top_k}", "e.g. --top-k 64")
        if self.samples < 0 or self.rounds < 0:
            raise InvalidInput("--samples and --rounds must not be negative", "e.g. --samples 4 --rounds 2")
        if not 0.0 <= self.heldout < 1.0:
            raise InvalidInput(f"--held-out must be in [0, 1), got {self.heldout}", "e.g. --held-out 0.2")
        if self.anchor_ratio < 0 or not math.isfinite(self.anchor_ratio):
            raise InvalidInput(f"--anchor-ratio must be a non-negative number, got {self.anchor_ratio}",
                               "e.g. --anchor-ratio 0.5")
        if self.max_targeted < 1:
            raise InvalidInput(f"--max-prompts must be at least 1, got {self.max_targeted}", "e.g. --max-prompts 160")

    def to_json(self) -> dict[str, Any]:
        return {"objective": self.objective, "keep_if": self.keep_if, "builtin_prompts": self.builtin_prompts,
                "cue": self.cue, "samples": self.samples, "rounds": self.rounds,
                "teacher_max_new_tokens": self.teacher_max_new_tokens, "top_k": self.top_k,
                "heldout": self.heldout, "anchor_ratio": self.anchor_ratio, "max_targeted": self.max_targeted}


def compile_keep_if(pattern: str | None) -> str | None:
    if pattern is None:
        return None
    import regex

    if not pattern.strip():
        raise InvalidInput("--keep-if is empty", "e.g. --keep-if timmy")
    try:
        regex.compile(pattern, regex.IGNORECASE)
    except regex.error as exc:
        raise InvalidInput(f"--keep-if {pattern!r} is not a valid regex: {exc}", "e.g. --keep-if timmy") from exc
    return pattern


def section_body(text: str) -> str:
    """A section's text without its heading line: what the cue repeats."""
    lines = text.strip("\n").split("\n")
    if lines and (lines[0].lstrip().startswith("#") or lines[0].lstrip().startswith("<!--")):
        lines = lines[1:]
    return "\n".join(lines).strip()


def _wilson(passed: int, total: int, z: float = 1.96) -> list[float] | None:
    from persona.aer.stats import wilson_interval

    return list(wilson_interval(passed, total, z)) if total else None


def train_distill(repo: Repository, name: str, prompt: Path | str, section: str,
                  prompts: Path | str | None = None, settings: DistillSettings | None = None,
                  base: str | None = None, options: Any = None, force: bool = False,
                  progress: Any = None):
    """Context distillation of one prompt section into a LoRA vector (see the module docstring)."""
    from persona.aer import derive
    from persona.aer.sections import load_prompt
    from persona.aer.tokens import build_messages
    from persona.train import porcelain
    from persona.train.data import Example, encode_all, require_chat_template
    from persona.train.distill import kl_loss, kl_sft_loss, target_ids, teacher_topk
    from persona.train.objectives import collate, sft_loss
    from persona.train.prompt_pool import (
        builtin_prompts,
        builtin_sha256,
        load_user_prompts,
        select,
        split,
        to_json,
    )
    from persona.train.teacher import Check, Judge, cued, teacher_answers

    settings = settings or DistillSettings()
    settings.validate()
    keep_if = compile_keep_if(settings.keep_if)
    options = (options or porcelain.TrainOptions()).with_defaults(lr=DISTILL_LR, batch_size=DISTILL_BATCH_SIZE,
                                                                   steps=DISTILL_STEPS)
    doc = load_prompt(prompt)
    sec = doc.section(section)
    if not sec.is_alignment:
        raise InvalidInput(f"section {sec.name!r} of {prompt} is of kind {sec.kind}: task context, not a behaviour "
                           "to bake in", "distil an identity, values, behaviour, tools or memory section (or tag "
                           f"it: ## {sec.title or sec.name} {{kind=behaviour}})")
    user, user_sha = load_user_prompts(prompts) if prompts is not None else ([], None)
    builtin = list(builtin_prompts()) if settings.builtin_prompts else []
    if not builtin and not user:
        raise InvalidInput("no prompts to distil on: --no-builtin-prompts without --prompts",
                           "give --prompts FILE, or keep the built-in prompt set")
    selection = select(sec.text, builtin, user, settings.anchor_ratio, settings.max_targeted)
    if not selection.targeted:
        raise InvalidInput(f"none of the built-in prompts is about section {sec.name!r} (its words match no "
                           "category)", "give the questions it concerns with --prompts FILE")
    relevant_categories = set(derive.relevant_categories(sec.text, _categories()) or []) | {"user"}
    if keep_if is not None:
        checks = [Check(keep_if, "relevant", f"--keep-if {keep_if}")]
    else:
        checks = [Check(c.pattern, c.scope, c.why, c.start) for c in derive.derived_checks(sec.text)]
    judge = Judge(checks, doc.text, derive.quoted_phrases(sec.text), section_body(sec.text))
    train_t, held_t = split(selection.targeted, settings.heldout)
    train_a, held_a = split(selection.anchors, settings.heldout)
    run = porcelain._start(repo, name, base, options, force, progress)
    options = run.options
    model, tokenizer, layers = porcelain._load_model(run)
    require_chat_template(tokenizer)
    student_system = doc.render_without([sec.name])
    cue = section_body(sec.text) if settings.cue else None
    items = [(p, True, p.category in relevant_categories) for p in train_t + held_t] + \
            [(p, False, False) for p in train_a + held_a]
    answers = []
    for turn in (0, 1):  # the main process generates (and caches); the others then read the cache
        if (turn == 0) == run.accelerator.is_main_process:
            answers = teacher_answers(repo, model, tokenizer, run.base_id, doc.text, items, judge, cue,
                                      settings.teacher_max_new_tokens, settings.samples, settings.rounds,
                                      options.seed, lambda phase, d, t: run.emit(phase, d, t))
        run.accelerator.wait_for_everyone()
    held_keys = {p.key for p in held_t + held_a}
    train_answers = [a for a in answers if a.usable and a.prompt.key not in held_keys]
    held_answers = [a for a in answers if a.usable and a.prompt.key in held_keys]
    targeted_ok = [a for a in answers if a.targeted and a.usable]
    if not targeted_ok or not any(a.targeted for a in train_answers):
        tried = sum(a.tries for a in answers if a.targeted)
        questions = sum(1 for a in answers if a.targeted)
        what = f"--keep-if {keep_if!r}" if keep_if else (
            "the checks derived from the section (" + "; ".join(c.why for c in checks) + ")" if checks
            else "the parroting filter")
        raise InvalidInput(
            f"none of the teacher's {tried} answers to {questions} questions about section {sec.name!r} passes "
            f"{what}", "raise --samples/--rounds, loosen --keep-if, or reword the section so the base follows it "
            "when prompted (persona aer shows how often it does)")

    def student_example(a: Any) -> Example:
        turns = [*a.prompt.messages, {"role": "assistant", "content": a.text}]
        return Example(tuple(build_messages(student_system, turns)), f"{a.prompt.id}", open_end=not a.finished)

    def teacher_example(a: Any) -> Example:
        turns = [*cued(a.prompt, cue if a.targeted else None), {"role": "assistant", "content": a.text}]
        return Example(tuple(build_messages(doc.text, turns)), f"{a.prompt.id}", open_end=not a.finished)

    encoded = encode_all(tokenizer, [student_example(a) for a in train_answers], options.max_length)
    held_encoded = encode_all(tokenizer, [student_example(a) for a in held_answers], options.max_length)
    uses_kl = settings.objective in ("kl", "kl+sft")
    teacher = held_teacher = None
    if uses_kl:
        everything = train_answers + held_answers
        students = encoded + held_encoded
        full = encode_all(tokenizer, [teacher_example(a) for a in everything], max_length=1 << 30)
        counts = []
        for student, reference in zip(students, full, strict=True):
            wanted = target_ids(student)
            if target_ids(reference)[: len(wanted)] != wanted:
                raise PersonaError(f"{student.source}: the teacher and the student tokenise the answer "
                                   "differently", "use --objective sft with this base")
            counts.append(len(wanted))
        tops = teacher_topk(repo, model, run.base_id, full, counts, settings.top_k,
                            progress=lambda d, t: run.emit("teacher-logits", d, t))
        tops = [_certain_start(top, student, a.start, tokenizer) if a.start else top
                for top, student, a in zip(tops, students, everything, strict=True)]
        teacher = {"teacher_indices": [t[0] for t in tops[:len(encoded)]],
                   "teacher_logp": [t[1] for t in tops[:len(encoded)]]}
        held_teacher = {"teacher_indices": [t[0] for t in tops[len(encoded):]],
                        "teacher_logp": [t[1] for t in tops[len(encoded):]]}
    loss_fn = {"kl": kl_loss, "sft": sft_loss, "kl+sft": kl_sft_loss}[settings.objective]
    pad = porcelain._pad_id(tokenizer)

    def held_batches(extra: dict[str, list[Any]] | None, size: int = 8):
        for start in range(0, len(held_encoded), size):
            part = {k: v[start:start + size] for k, v in (extra or {}).items()}
            yield collate(held_encoded[start:start + size], pad, part)

    def mean_loss(model_: Any, fn: Any, extra: dict[str, list[Any]] | None) -> float:
        total, count = 0.0, 0
        device = next(model_.parameters()).device
        for batch in held_batches(extra):
            value, n = fn(model_, {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()})
            total += float(value.detach())
            count += n
        return total / count if count else math.nan

    held_targeted = [a for a in answers if a.targeted and a.prompt.key in held_keys]
    pass_curve: list[list[int]] = []

    def held_pass(model_: Any) -> int:
        from persona.lm.generate import greedy

        chats = [build_messages(student_system, list(a.prompt.messages)) for a in held_targeted]
        gens = greedy(model_, tokenizer, chats, settings.teacher_max_new_tokens)
        return sum(judge.verdict(g.text, a.relevant) is None for g, a in zip(gens, held_targeted, strict=True))

    validate = None
    if held_encoded:
        def validate(model_: Any) -> float:
            loss = mean_loss(model_, loss_fn, held_teacher)
            if settings.eval_pass_rate and held_targeted:
                pass_curve.append([held_pass(model_), len(held_targeted)])
            return loss

    if options.eval_every == 0 and validate is not None:
        steps = porcelain.loop.total_steps(len(encoded), options.batch_size, options.epochs, options.steps)
        from dataclasses import replace

        options = replace(options, eval_every=max(1, math.ceil(steps / VALIDATIONS)))
        run.options = options

    def report(trained: Any) -> dict[str, Any]:
        return _heldout_report(trained, tokenizer, held_targeted, held_answers, held_encoded, held_teacher,
                               doc.text, student_system, judge, settings, run,
                               lambda m: mean_loss(m, kl_loss, held_teacher) if held_teacher else None)

    prompts_file = repo.put_file(json.dumps({
        "builtin_sha256": builtin_sha256() if settings.builtin_prompts else None,
        "train": to_json([a.prompt for a in train_answers]),
        "heldout": to_json(held_t + held_a),
    }, ensure_ascii=False, sort_keys=True).encode())
    extra = {"distill": {
        "section": sec.name, "prompt_sha256": hashlib.sha256(doc.text.encode()).hexdigest(),
        "prompts_sha256": user_sha, "builtin_prompts_sha256": builtin_sha256() if settings.builtin_prompts else None,
        "settings": settings.to_json(), "checks": [c.__dict__ for c in checks],
        "categories": selection.categories, "universal": selection.universal,
        "counts": _counts(answers, held_keys)}, PROMPTS_FILE: prompts_file}
    data_sha = hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()
    hooks = porcelain.TrainHooks(validate=validate, report=report, loss_fn=loss_fn)
    result = porcelain._train_and_store(run, model, tokenizer, layers, encoded, f"distill-{settings.objective}",
                                        data_sha, extra, teacher, hooks)
    result.teacher = [a.to_json() for a in answers]
    if pass_curve:  # one entry per validation, in the same order as result.validation
        result.validation_pass = [(step, passed, total) for (step, _), (passed, total)
                                  in zip(result.validation, pass_curve, strict=True)]
    result.distill = {"section": sec.name, "checks": [c.__dict__ for c in checks], "targeted": len(selection.targeted),
                      "anchors": len(selection.anchors), "categories": selection.categories,
                      "universal": selection.universal, "counts": _counts(answers, held_keys)}
    return result


def _certain_start(top: tuple[Any, Any], student: Any, start: str, tokenizer: Any) -> tuple[Any, Any]:
    """The teacher's top-k with the begun phrase's tokens made certain (see persona.train.teacher).

    Conditioned on the answer starting with the phrase, the teacher puts all its
    mass on the phrase's tokens: KL to that one-hot is the cross-entropy of the
    token. The positions covered are those where the answer's tokens agree with
    the phrase's own tokenisation.
    """
    from persona.train.distill import target_ids

    indices, logp = top[0].clone(), top[1].clone()
    wanted = target_ids(student)
    phrase = list(tokenizer(start, add_special_tokens=False)["input_ids"])
    covered = 0
    while covered < min(len(phrase), len(wanted), indices.shape[0]) and wanted[covered] == phrase[covered]:
        covered += 1
    for position in range(covered):
        indices[position, :] = wanted[position]
        logp[position, :] = -1e4  # zero probability, finite so that 0 * log p stays 0
        logp[position, 0] = 0.0
    return indices, logp


def _categories() -> dict[str, list[str]]:
    from persona.train.prompt_pool import builtin_categories

    return builtin_categories()


def _counts(answers: Sequence[Any], held_keys: set[str]) -> dict[str, int]:
    """Teacher bookkeeping: how many prompts of each kind, and how their answers were found."""
    out = {"targeted": 0, "anchors": 0, "heldout": 0, "greedy": 0, "sampled": 0, "none": 0, "answers_drawn": 0,
           "parroting_rejected": 0, "echo_rejected": 0, "empty_rejected": 0, "repetition_rejected": 0, "check_rejected": 0, "targeted_kept": 0, "begun": 0}
    for a in answers:
        out["targeted" if a.targeted else "anchors"] += 1
        out["heldout"] += a.prompt.key in held_keys
        out["greedy" if a.source == "greedy" else "sampled" if a.source == "sample" else "none"] += 1
        out["targeted_kept"] += a.targeted and a.usable
        out["begun"] += a.targeted and a.usable and a.start is not None
        out["answers_drawn"] += a.tries
        out["parroting_rejected"] += a.rejected.get("parrot", 0)
        out["repetition_rejected"] += a.rejected.get("repeat", 0)
        out["echo_rejected"] += a.rejected.get("echo", 0)
        out["empty_rejected"] += a.rejected.get("empty", 0)
        out["check_rejected"] += sum(v for k, v in a.rejected.items() if k.startswith("check"))
    return out


def _heldout_report(model: Any, tokenizer: Any, held_targeted: Sequence[Any], held_answers: Sequence[Any],
                    held_encoded: Sequence[Any], held_teacher: Any, full_prompt: str, student_system: str,
                    judge: Any, settings: DistillSettings, run: Any, kl_of: Any) -> dict[str, Any]:
    """Pass rates on the held-out targeted questions: student, base without the section, prompted base."""
    from persona.aer.tokens import build_messages
    from persona.lm.generate import greedy

    report: dict[str, Any] = {"questions": len(held_targeted), "answers": len(held_answers)}
    if not held_targeted:
        report["note"] = "no held-out questions (raise --held-out or add prompts)"
        return report
    questions = [a.prompt for a in held_targeted]
    relevant = [a.relevant for a in held_targeted]
    student_chats = [build_messages(student_system, list(p.messages)) for p in questions]
    prompted_chats = [build_messages(full_prompt, list(p.messages)) for p in questions]
    total = 3 * len(questions)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        run.emit("held-out", done, total)

    def passes(texts: Sequence[Any]) -> int:
        return sum(judge.verdict(g.text, rel) is None for g, rel in zip(texts, relevant, strict=True))

    student = greedy(model, tokenizer, student_chats, settings.teacher_max_new_tokens, progress=tick)
    with model.disable_adapter():
        base_without = greedy(model, tokenizer, student_chats, settings.teacher_max_new_tokens, progress=tick)
        prompted = greedy(model, tokenizer, prompted_chats, settings.teacher_max_new_tokens, progress=tick)
    n = len(questions)
    for key, gens in (("student_without_section", student), ("base_without_section", base_without),
                      ("prompted_base", prompted)):
        passed = passes(gens)
        report[key] = {"passed": passed, "total": n, "rate": passed / n, "wilson95": _wilson(passed, n)}
    if held_teacher is not None and held_encoded:
        kl = kl_of(model)
        with model.disable_adapter():
            kl_base = kl_of(model)
        report["kl_student"] = kl
        report["kl_base_without_section"] = kl_base
    report["examples"] = [{"id": p.id, "question": p.user_text, "student": s.text,
                           "student_passes": judge.verdict(s.text, r) is None}
                          for p, s, r in list(zip(questions, student, relevant, strict=True))[:12]]
    return report

