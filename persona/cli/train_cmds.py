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
           "probes": "probes"}


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
    section: str | None = typer.Option(None, "--section", help="With --distill: the section to make droppable."),
    prompts: Path | None = typer.Option(None, "--prompts", help="With --distill: questions, one per line."),
    objective: str = typer.Option("sft", "--objective", help="With --distill: sft (train on the teacher's "
                                                             "greedy answers) or kl (match its distribution)."),
    teacher_max_new_tokens: int = typer.Option(128, "--teacher-max-new-tokens",
                                               help="With --distill: the teacher's answer length limit."),
    top_k: int = typer.Option(64, "--top-k", help="With --objective kl: teacher log-probs kept per token."),
    keep_if: str | None = typer.Option(None, "--keep-if", help="With --distill: train only on teacher answers "
                                                               "matching this regex (case-insensitive)."),
    base: str | None = typer.Option(None, "--base", help="Base to train on (default: the only one)."),
    rank: int = typer.Option(16, "--rank", help="LoRA rank r."),
    lora_alpha: float = typer.Option(32.0, "--lora-alpha", help="LoRA alpha (scale = alpha / r)."),
    target_modules: str = typer.Option("q_proj,v_proj", "--target-modules",
                                       help="Comma-separated layer names, or all-linear."),
    lora_dropout: float = typer.Option(0.0, "--lora-dropout", help="Dropout on the LoRA input."),
    rslora: bool = typer.Option(False, "--rslora", help="Rank-stabilised scaling (alpha / sqrt(r))."),
    epochs: float | None = typer.Option(None, "--epochs", help="Passes over the data (default 1)."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (instead of --epochs)."),
    lr: float = typer.Option(2e-4, "--lr", help="AdamW learning rate (constant)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Examples per step."),
    max_length: int = typer.Option(512, "--max-length", help="Tokens per example (longer ones are cut)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the LoRA init and the data order."),
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
    persona train identity --distill prompts/SOUL.md --section identity --prompts data/questions.txt
    --keep-if timmy ;
    multi-GPU: accelerate launch -m persona train listening --data data/listening.jsonl
    """
    from persona.errors import InvalidInput
    from persona.train.lora import LoraSettings, parse_target_modules
    from persona.train.porcelain import TrainOptions, train_distill, train_sft

    if (data is None) == (distill is None):
        raise InvalidInput("give exactly one of --data or --distill",
                           "e.g. persona train listening --data data/listening.jsonl")
    if data is not None and (section or prompts or objective != "sft" or keep_if is not None):
        raise InvalidInput("--section, --prompts, --objective and --keep-if go with --distill",
                           "drop them, or use --distill")
    if distill is not None and (section is None or prompts is None):
        raise InvalidInput("--distill needs --section and --prompts",
                           "e.g. --distill SOUL.md --section identity --prompts questions.txt")
    lora = LoraSettings(rank, lora_alpha, parse_target_modules(target_modules), lora_dropout, rslora)
    options = TrainOptions(lora=lora, epochs=epochs, steps=steps, lr=lr, batch_size=batch_size,
                           max_length=max_length, seed=seed, device=device, mixed_precision=mixed_precision,
                           checkpoint_every=checkpoint_every, resume=resume)
    repo = open_repo()
    bars = _Bars()
    with bars.bar:
        if data is not None:
            result = train_sft(repo, name, data, base, options, force, progress=bars)
        else:
            result = train_distill(repo, name, distill, section, prompts, objective, teacher_max_new_tokens,
                                   top_k, base, options, force, progress=bars, keep_if=keep_if)
    if result.id is None:  # a non-main process of a multi-GPU run: the main one reports
        return
    if json_out:
        emit_json(result.to_json())
        return
    if resume and result.resumed_from is None:
        err("note: no checkpoint for these options; trained from step 0")
    losses = result.losses
    curve = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no steps"
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    tensors = result.vector.tensors if result.vector else 0
    typer.echo(f"trained vector {result.name} {short(result.id)}: lora r={rank} on {tensors} tensors, "
               f"base {short(result.base)}")
    typer.echo(f"  {result.objective}, {result.examples} examples ({result.truncated} cut to --max-length), "
               f"{result.steps} steps{resumed}, {curve}")
    typer.echo(f"  {result.seconds:.1f}s training on {result.device}, {result.tokens_per_second:.0f} tokens/s")
    if result.teacher:
        cut = sum(not t["finished"] for t in result.teacher)
        skipped = sum(not t.get("kept", True) for t in result.teacher)
        kept = f", {skipped} not matching --keep-if left out" if skipped else ""
        typer.echo(f"  teacher: {len(result.teacher)} answers ({cut} cut off at --teacher-max-new-tokens{kept})")


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
