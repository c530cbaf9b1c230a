"""base and vector: importing models and behaviours into the store."""

from __future__ import annotations

from pathlib import Path

import typer

from persona.cli.context import emit_json, open_repo, progress_bar, short

base_app = typer.Typer(help="Base models: import, list, show.", no_args_is_help=True)
vector_app = typer.Typer(help="Task vectors (behaviours): import, list, show.", no_args_is_help=True)


def _bytes_progress(description: str):
    bar = progress_bar(description, None)
    task = bar.add_task(description, total=None)

    def update(done: int, total: int, name: str) -> None:
        bar.update(task, completed=done / 1e6, total=total / 1e6, description=f"{description} {name}")

    return bar, update


@base_app.command("import")
def base_import(
    source: str = typer.Argument(..., help="`smollm2` (the embedded SmolLM2-135M-Instruct), a Hugging Face "
                                           "model directory, or a .gguf file."),
    name: str | None = typer.Option(None, "--name", help="Name in the store (default: from the source)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Load pickle .bin weights with weights_only=True (unsafe formats "
                                           "are refused otherwise)."),
    force: bool = typer.Option(False, "--force", help="Re-point an existing name at this import."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Import a base model: weights as content-addressed blobs, plus config and tokenizer files.

    Examples: persona base import smollm2 ; persona base import ./my-hf-model --name mine
    """
    from persona.porcelain.models import import_base

    repo = open_repo()
    bar, update = _bytes_progress("importing")
    with bar:
        info = import_base(repo, source, name, allow_pickle, force, progress=update)
    if json_out:
        emit_json(info.to_json())
    else:
        typer.echo(f"imported base {info.name} {short(info.id)}: {info.architecture}, "
                   f"{info.parameters / 1e6:.1f}M parameters in {info.tensors} tensors")


@base_app.command("list")
def base_list(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List imported bases.

    Example: persona base list
    """
    from persona.porcelain.models import list_bases

    bases = list_bases(open_repo())
    if json_out:
        emit_json([b.to_json() for b in bases])
        return
    if not bases:
        typer.echo("no bases yet: persona base import smollm2")
    for b in bases:
        typer.echo(f"{b.name:20} {short(b.id)}  {b.architecture:24} {b.parameters / 1e6:8.1f}M  "
                   f"{b.source.get('kind')}:{b.source.get('name')}")


@base_app.command("show")
def base_show(
    name: str = typer.Argument(..., help="Base name or id prefix."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show one base: architecture, size, files kept for builds.

    Example: persona base show smollm2
    """
    from persona.porcelain.models import show_base

    info = show_base(open_repo(), name)
    if json_out:
        emit_json(info.to_json())
        return
    typer.echo(f"base {info.name} {info.id}")
    typer.echo(f"  architecture  {info.architecture} (tied embeddings: {info.tie_word_embeddings})")
    typer.echo(f"  parameters    {info.parameters:,} in {info.tensors} tensors")
    typer.echo(f"  source        {info.source}")
    typer.echo(f"  files         {', '.join(info.files)}")


@base_app.command("export")
def base_export(
    name: str = typer.Argument(..., help="Base name or id prefix."),
    out: Path = typer.Option(..., "-o", "--output", help="Directory to write."),
    force: bool = typer.Option(False, "--force", help="Replace an existing directory."),
) -> None:
    """Write a base back out as a Hugging Face directory (e.g. to train an adapter with other tools).

    Example: persona base export smollm2 -o out/smollm2
    """
    from persona.porcelain.build import export_base

    typer.echo(f"exported base {name} to {export_base(open_repo(), name, out, force)}")


@vector_app.command("import")
def vector_import(
    name: str = typer.Argument(..., help="Name for the vector (e.g. listening)."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A PEFT LoRA adapter directory."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint",
                                           help="A full fine-tuned HF model directory (delta = W_ft - W_base)."),
    base: str | None = typer.Option(None, "--base", help="The base it was made from (default: the only one)."),
    rank: int | None = typer.Option(None, "--rank", help="With --checkpoint: store a rank-R truncated SVD "
                                                         "and report the relative error per tensor."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle weights (weights_only)."),
    force: bool = typer.Option(False, "--force", help="Re-point an existing name (the old one stays in the reflog)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Import a behaviour as a task vector pinned to its base.

    Examples: persona vector import listening --adapter out/listening-lora ;
    persona vector import tuned --checkpoint out/tuned --rank 16
    """
    from persona.errors import InvalidInput
    from persona.porcelain.models import import_adapter, import_checkpoint

    if (adapter is None) == (checkpoint is None):
        raise InvalidInput("give exactly one of --adapter or --checkpoint",
                           "e.g. persona vector import listening --adapter path/to/peft_adapter")
    repo = open_repo()
    if adapter is not None:
        info = import_adapter(repo, name, adapter, base, allow_pickle, force)
    else:
        bar, update = _bytes_progress("diffing")
        with bar:
            info = import_checkpoint(repo, name, checkpoint, base, rank, allow_pickle, force, progress=update)
    if json_out:
        emit_json(info.to_json())
        return
    typer.echo(f"imported vector {info.name} {short(info.id)}: {info.kind}, {info.tensors} tensors, "
               f"{info.parameters / 1e6:.2f}M stored parameters, base {short(info.base)}")
    for tname, error in sorted(info.svd_errors.items()):
        typer.echo(f"  rank-{rank} SVD of {tname}: relative error {error:.4f}")


@vector_app.command("list")
def vector_list(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List vectors.

    Example: persona vector list
    """
    from persona.porcelain.models import list_vectors

    vectors = list_vectors(open_repo())
    if json_out:
        emit_json([v.to_json() for v in vectors])
        return
    if not vectors:
        typer.echo("no vectors yet: persona vector import NAME --adapter DIR (or persona train)")
    for v in vectors:
        typer.echo(f"{v.name:20} {short(v.id)}  {v.kind:8} {v.tensors:4} tensors  "
                   f"{v.parameters / 1e6:7.2f}M  base {short(v.base)}  {v.provenance.get('source', '')}")


@vector_app.command("show")
def vector_show(
    name: str = typer.Argument(..., help="Vector name or id prefix."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show a vector with its provenance (and training run: data hash, hyper-parameters, loss curve).

    Example: persona vector show listening
    """
    import json

    from persona.porcelain.models import show_vector

    info = show_vector(open_repo(), name)
    if json_out:
        emit_json(info.to_json())
        return
    typer.echo(f"vector {info.name} {info.id}")
    typer.echo(f"  kind        {info.kind}, {info.tensors} tensors, {info.parameters:,} stored parameters")
    typer.echo(f"  base        {info.base}")
    shown = {k: v for k, v in info.provenance.items() if k not in ("heldout", "distill")}
    typer.echo(f"  provenance  {json.dumps(shown, sort_keys=True)[:400]}")
    distilled = info.provenance.get("distill")
    if isinstance(distilled, dict):
        counts = distilled.get("counts", {})
        typer.echo(f"  distilled   section {distilled.get('section')!r}, prompt {str(distilled.get('prompt_sha256'))[:12]}, "
                   f"{counts.get('targeted', '?')} targeted + {counts.get('anchors', '?')} anchor prompts "
                   f"({counts.get('heldout', '?')} held out)")
    heldout = info.provenance.get("heldout")
    if isinstance(heldout, dict):
        for line in _heldout_lines(heldout, info.provenance.get("selected_step")):
            typer.echo(line)
    if info.training:
        t = info.training
        losses = t["losses"]
        curve = f"{losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps" if losses else "none"
        typer.echo(f"  training    {t['status']}, {t['wall_seconds']:.1f}s, data {t['data_sha256'][:12]}, "
                   f"loss {curve}")
        typer.echo(f"  hyper-parameters {json.dumps(t['hyperparameters'], sort_keys=True)}")


def _heldout_lines(heldout: dict, selected_step: object) -> list[str]:
    """The held-out evaluation a distillation stored with its vector."""
    from persona.aer.stats import format_rate

    if "student_without_section" not in heldout:
        return [f"  held-out    {heldout.get('note', 'none')}"]
    lines = [f"  held-out    {heldout['questions']} questions never trained on (checkpoint of step "
             f"{selected_step}), passing the section's check:"]
    for key, label in (("student_without_section", "with this vector, without the section"),
                       ("base_without_section", "base, without the section"),
                       ("prompted_base", "base, with the whole prompt")):
        part = heldout.get(key, {})
        if "passed" in part:
            lines.append(f"              {label:40} {format_rate(part['passed'], part['total'])}")
    if heldout.get("kl_student") is not None and heldout.get("kl_base_without_section"):
        lines.append(f"              KL to the teacher per token: {heldout['kl_student']:.3f} "
                     f"(base without the section {heldout['kl_base_without_section']:.3f})")
    return lines


def register(app: typer.Typer) -> None:
    app.add_typer(base_app, name="base")
    app.add_typer(vector_app, name="vector")
