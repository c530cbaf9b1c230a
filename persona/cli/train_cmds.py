"""train and vector test: behaviours into task vectors, and checking one alone on its base.

Multi-GPU training needs no other code: ``accelerate launch -m persona train listening
--data data/listening.jsonl`` runs the same loop under DDP (see persona.train.loop).
torch and friends are imported inside the commands, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from persona.cli.context import emit_json, err, open_repo, progress_bar, short
from persona.cli.model_cmds import vector_app

if TYPE_CHECKING:
    from persona.train.porcelain import ProgressEvent

_LABELS = {"teacher": "teacher answers", "teacher-logits": "teacher logits", "train": "training",
           "probes": "probes", "held-out": "held-out check"}


class _Bars:
    """One rich progress row per phase; training shows the latest loss in its label."""

    def __init__(self) -> None:
        self.bar = progress_bar("persona", None)
        self.tasks: dict[str, int] = {}

    def __call__(self, event: ProgressEvent) -> None:
        label = _LABELS.get(event.phase, event.phase)
        if event.phase not in self.tasks:
            self.tasks[event.phase] = self.bar.add_task(label, total=event.total)
        text = label if event.loss is None else f"{label}  loss {event.loss:.4f}"
        self.bar.update(self.tasks[event.phase], completed=event.done, total=event.total, description=text)


def train(
    name: str = typer.Argument(..., help="Name for the new vector (e.g. listening)."),
    data: Path | None = typer.Option(None, "--data", help="Chat JSONL ({\"messages\": [...]} per line), a "
                                                          "Hermes/OpenAI session .json, or a directory of them."),
    distill: Path | None = typer.Option(None, "--distill", help="Context distillation: the prompt file whose "
                                                                "--section is baked into the weights."),
    section: str | None = typer.Option(None, "--section", help="With --distill: the section to make droppable "
                                                               "(any case: Identity or identity)."),
    prompts: Path | None = typer.Option(None, "--prompts", help="With --distill: your own questions, one per line "
                                                                "(or JSONL chats), added to the built-in set."),
    builtin_prompts: bool = typer.Option(True, "--builtin-prompts/--no-builtin-prompts",
                                         help="With --distill: use persona's built-in prompt set (391 questions)."),
    objective: str | None = typer.Option(None, "--objective", help="With --distill: kl+sft (default), kl (match "
                                                                   "the teacher's distribution) or sft."),
    keep_if: str | None = typer.Option(None, "--keep-if", help="With --distill: keep only teacher answers matching "
                                                               "this regex (default: checks derived from the section)."),
    cue: bool = typer.Option(True, "--cue/--no-cue", help="With --distill: repeat the section beside the teacher's "
                                                          "targeted questions (the student never sees it)."),
    samples: int = typer.Option(4, "--samples", help="With --distill: teacher samples per round where greedy fails."),
    rounds: int = typer.Option(2, "--rounds", help="With --distill: rounds of --samples before giving a question up."),
    teacher_max_new_tokens: int = typer.Option(40, "--teacher-max-new-tokens",
                                               help="With --distill: the teacher's answer length limit."),
    top_k: int = typer.Option(64, "--top-k", help="With a kl objective: teacher log-probs kept per token."),
    heldout: float = typer.Option(0.2, "--held-out", help="With --distill: share of prompts held out of training."),
    anchor_ratio: float = typer.Option(0.5, "--anchor-ratio", help="With --distill: general prompts per targeted "
                                                                   "one (they keep the student near the base)."),
    max_prompts: int = typer.Option(96, "--max-prompts", help="With --distill: at most this many targeted prompts."),
    eval_pass_rate: bool = typer.Option(False, "--eval-pass-rate", help="With --distill: also measure the held-out "
                                                                        "pass rate at every validation (slower)."),
    base: str | None = typer.Option(None, "--base", help="Base to train on (default: the only one)."),
    rank: int = typer.Option(16, "--rank", help="LoRA rank r."),
    lora_alpha: float = typer.Option(32.0, "--lora-alpha", help="LoRA alpha (scale = alpha / r)."),
    target_modules: str = typer.Option("q_proj,v_proj", "--target-modules",
                                       help="Comma-separated layer names, or all-linear."),
    lora_dropout: float = typer.Option(0.0, "--lora-dropout", help="Dropout on the LoRA input."),
    rslora: bool = typer.Option(False, "--rslora", help="Rank-stabilised scaling (alpha / sqrt(r))."),
    epochs: float | None = typer.Option(None, "--epochs", help="Passes over the data (default 1)."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps, instead of --epochs "
                                                           "(--distill default: 40)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate, constant (default 2e-4; --distill: 2e-3)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Examples per step (default 4; --distill: 8)."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, or apollo (pip install 'persona[apollo]')."),
    eval_every: int = typer.Option(0, "--eval-every", help="With --distill: held-out check every N steps "
                                                           "(default: 4 checks per run)."),
    max_length: int = typer.Option(512, "--max-length", help="Tokens per example (longer ones are cut)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the LoRA init, the data order and teacher sampling."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision",
                                        help="no, bf16, fp16 or auto (bf16 on a GPU that has it)."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="Checkpoint every N steps (0: off)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of the same command."),
    force: bool = typer.Option(False, "--force", help="Re-point an existing vector name (the old one stays "
                                                      "in the reflog)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Train a behaviour into a LoRA task vector pinned to its base.

    Examples: persona train listening --data data/listening.jsonl --steps 100 ;
    persona train identity --distill prompts/SOUL.md --section identity ;
    persona train style --distill SOUL.md --section Style --prompts my_questions.txt --keep-if '^howdy' ;
    multi-GPU: accelerate launch -m persona train listening --data data/listening.jsonl
    """
    from persona.errors import InvalidInput
    from persona.train.lora import LoraSettings, parse_target_modules
    from persona.train.porcelain import TrainOptions, train_sft

    if (data is None) == (distill is None):
        raise InvalidInput("give exactly one of --data or --distill",
                           "e.g. persona train listening --data data/listening.jsonl")
    distill_only = {"--section": section, "--prompts": prompts, "--objective": objective, "--keep-if": keep_if}
    given = [flag for flag, value in distill_only.items() if value is not None]
    if data is not None and (given or not builtin_prompts or not cue):
        raise InvalidInput(f"{', '.join(given) or 'the prompt-set options'} go with --distill",
                           "drop them, or use --distill")
    if distill is not None and section is None:
        raise InvalidInput("--distill needs --section", "e.g. --distill SOUL.md --section identity")
    lora = LoraSettings(rank, lora_alpha, parse_target_modules(target_modules), lora_dropout, rslora)
    options = TrainOptions(lora=lora, epochs=epochs, steps=steps, lr=lr, batch_size=batch_size,
                           max_length=max_length, seed=seed, device=device, mixed_precision=mixed_precision,
                           checkpoint_every=checkpoint_every, resume=resume, optimizer=optimizer,
                           eval_every=eval_every)
    repo = open_repo()
    bars = _Bars()
    with bars.bar:
        if data is not None:
            result = train_sft(repo, name, data, base, options, force, progress=bars)
        else:
            from persona.train.distillation import DEFAULT_OBJECTIVE, DistillSettings, train_distill

            settings = DistillSettings(objective=objective or DEFAULT_OBJECTIVE, keep_if=keep_if,
                                       builtin_prompts=builtin_prompts, cue=cue, samples=samples, rounds=rounds,
                                       teacher_max_new_tokens=teacher_max_new_tokens, top_k=top_k,
                                       heldout=heldout, anchor_ratio=anchor_ratio, max_targeted=max_prompts,
                                       eval_pass_rate=eval_pass_rate)
            result = train_distill(repo, name, distill, section, prompts, settings, base, options, force,
                                   progress=bars)
    if result.id is None:  # a non-main process of a multi-GPU run: the main one reports
        return
    if json_out:
        emit_json(result.to_json())
        return
    if resume and result.resumed_from is None:
        err("note: no checkpoint for these options; trained from step 0")
    for line in describe_training(result, rank):
        typer.echo(line)


def describe_training(result, rank: int) -> list[str]:
    """The human summary of a training run (also used by the demo's README)."""
    from persona.aer.stats import format_rate

    losses = result.losses
    curve = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no steps"
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    tensors = result.vector.tensors if result.vector else 0
    lines = [f"trained vector {result.name} {short(result.id)}: lora r={rank} on {tensors} tensors, "
             f"base {short(result.base)}",
             f"  {result.objective}, {result.examples} examples ({result.truncated} cut to --max-length), "
             f"{result.steps} steps{resumed}, {curve}",
             f"  {result.seconds:.1f}s training on {result.device}, {result.tokens_per_second:.0f} tokens/s"]
    if result.distill:
        d = result.distill
        c = d["counts"]
        scope = "every question (the section speaks of every reply)" if d["universal"] else \
            f"categories {', '.join(d['categories']) or '-'}"
        lines.append(f"  prompts: {d['targeted']} targeted ({scope}), {d['anchors']} anchors, "
                     f"{c['heldout']} of them held out")
        for check in d["checks"] or [{"why": "no check derived: answers kept unless they parrot the prompt"}]:
            lines.append(f"  check: {check['why']}")
        begun = f" (begun with the section's opening phrase: {c['begun']})" if c.get("begun") else ""
        lines.append(f"  teacher: {c['greedy']} greedy answers kept{begun}, {c['sampled']} found by sampling, "
                     f"{c['none']} questions without an acceptable answer ({c['answers_drawn']} answers drawn; "
                     f"rejected: {c['check_rejected']} by the check, {c['parroting_rejected']} parroting, "
                     f"{c.get('echo_rejected', 0)} echoing the section, {c.get('repetition_rejected', 0)} looping"
                     + (f", {c['empty_rejected']} saying nothing after the opening phrase" if c.get("empty_rejected")
                        else "") + ")")
        from persona.train.distillation import FEW_ANSWERS

        if c.get("targeted_kept", FEW_ANSWERS) < FEW_ANSWERS:
            lines.append(f"  warning: only {c['targeted_kept']} of {c['targeted']} targeted questions have an acceptable "
                         "teacher answer, so this vector has little to learn from: the base rarely follows this "
                         "section even when prompted (raise --samples/--rounds, or reword the section)")
    if result.validation:
        curve = ", ".join(f"{step}:{value:.3f}" for step, value in result.validation)
        lines.append(f"  held-out loss by step: {curve}; kept step {result.selected_step}")
    if result.validation_pass:
        curve = ", ".join(f"{step}:{passed}/{total}" for step, passed, total in result.validation_pass)
        lines.append(f"  held-out pass rate by step: {curve}")
    h = result.heldout
    if h and "student_without_section" in h:
        s, b, p = h["student_without_section"], h["base_without_section"], h["prompted_base"]
        lines.append(f"  held-out ({h['questions']} questions never trained on), passing the check:")
        lines.append(f"    student without the section  {format_rate(s['passed'], s['total'])}")
        lines.append(f"    base without the section     {format_rate(b['passed'], b['total'])}")
        lines.append(f"    base with the whole prompt   {format_rate(p['passed'], p['total'])}")
        if h.get("kl_student") is not None and h.get("kl_base_without_section"):
            ratio = h["kl_student"] / h["kl_base_without_section"]
            lines.append(f"    KL to the teacher per token: student {h['kl_student']:.3f}, base without the "
                         f"section {h['kl_base_without_section']:.3f} (ratio {ratio:.2f})")
    elif h and h.get("note"):
        lines.append(f"  held-out: {h['note']}")
    return lines


def vector_test(
    name: str = typer.Argument(..., help="Vector name or id prefix."),
    probes: Path = typer.Option(..., "--probes", help="Probe file (YAML list; see persona aer)."),
    prompt: Path | None = typer.Option(None, "--prompt", help="System prompt file for both runs (default: none)."),
    without: list[str] = typer.Option([], "--without", help="Section of --prompt to leave out (repeatable)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Answer length limit."),
    alpha: float = typer.Option(1.0, "--alpha", help="Scale of the vector (task arithmetic)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    answers: bool = typer.Option(False, "--answers", help="Print each answer too."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Test a vector alone on its base: probe pass rate without it and with it.

    Examples: persona vector test listening --probes probes/listening.yaml ;
    persona vector test identity --probes probes/soul.yaml --prompt SOUL.md --without identity
    """
    from persona.train import porcelain

    repo = open_repo()
    bars = _Bars()
    with bars.bar:
        report = porcelain.test_vector(repo, name, probes, prompt, without, max_new_tokens, alpha, device,
                                       progress=bars)
    if json_out:
        emit_json(report.to_json())
        return
    typer.echo(f"vector {report.vector} {short(report.id)} (alpha {report.alpha:g}) on base {short(report.base)}; "
               f"system prompt: {report.system}")
    width = max(8, *(len(p.id) for p in report.probes))
    typer.echo(f"  {'probe':{width}}  {'section':12}  {'base':6}  +vector")
    for p in report.probes:
        typer.echo(f"  {p.id:{width}}  {p.section:12}  {'pass' if p.base.passed else 'fail':6}  "
                   f"{'pass' if p.vector.passed else 'fail'}")
        if answers:
            typer.echo(f"      base:    {p.base.answer!r}")
            typer.echo(f"      +vector: {p.vector.answer!r}")
    n = len(report.probes)
    b = sum(p.base.passed for p in report.probes)
    v = sum(p.vector.passed for p in report.probes)
    typer.echo(f"  pass rate: base {b}/{n} ({report.base_pass_rate:.0%}), "
               f"with the vector {v}/{n} ({report.vector_pass_rate:.0%})")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    vector_app.command("test")(vector_test)
