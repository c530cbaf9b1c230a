"""merge and build: turning recipes into weights and deployable models."""

from __future__ import annotations

from pathlib import Path

import typer

from persona.cli.context import emit_json, open_repo, progress_bar, short


def _bar(description: str):
    bar = progress_bar(description, None)
    task = bar.add_task(description, total=None)

    def update(done: int, total: int, name: str) -> None:
        bar.update(task, completed=done / 1e6, total=total / 1e6)

    return bar, update


def merge(
    edits: list[str] | None = typer.Argument(None, help="NAME:ALPHA[:DENSITY] edits to the current recipe."),
    file: Path | None = typer.Option(None, "-f", "--file", help="A recipe YAML (instead of edits)."),
    message: str = typer.Option(..., "-m", "--message", help="What changed and why."),
    drop: list[str] | None = typer.Option(None, "--drop", help="Remove a vector from the current recipe."),
    base: str | None = typer.Option(None, "--base", help="Base for a new recipe."),
    method: str | None = typer.Option(None, "--method", help="task_arithmetic | ties | dare_ties | dare_linear"),
    density: float | None = typer.Option(None, "--density", help="Fraction of entries kept (ties, dare)."),
    lambda_: float | None = typer.Option(None, "--lambda", help="Scale of the merged delta."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for DARE's random drop."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Commit a recipe AND compute its merged weights into the store.

    Examples: persona merge -f recipes/timmy.yaml -m "more listening" ;
    persona merge listening:1.0 suggesting:-0.5 --method ties --density 0.2 -m "less suggesting"
    """
    from persona import recipes
    from persona.errors import InvalidInput
    from persona.porcelain.build import edit_head_recipe, merge_recipe

    repo = open_repo()
    if file is not None:
        if edits or drop:
            raise InvalidInput("give either -f RECIPE or NAME:ALPHA edits, not both", "see persona merge --help")
        recipe = recipes.resolve(repo, recipes.load(file))
    else:
        if not edits and not drop and all(v is None for v in (method, density, lambda_, seed, base)):
            raise InvalidInput("nothing to merge", "pass -f RECIPE or edits like listening:1.0")
        recipe = edit_head_recipe(repo, edits or [], drop or [], base, method, density, lambda_, seed)
    bar, update = _bar("merging")
    with bar:
        result = merge_recipe(repo, recipe, message, progress=update)
    if json_out:
        emit_json(result.to_json())
        return
    b = result.build
    typer.echo(f"[{repo.current_branch() or 'detached HEAD'} {short(result.commit.id)}] {result.commit.message}")
    how = "reused cached build" if b.cached else (f"merged {b.merged_tensors} tensors, reused "
                                                 f"{b.reused_tensors} base tensors in {b.seconds:.1f}s")
    typer.echo(f"  build {short(b.id)} ({b.dtype}): {how}")


def build(
    rev: str = typer.Argument("HEAD", help="Which commit's recipe to build."),
    out: Path = typer.Option(..., "-o", "--output", help="Output directory (or .gguf file with --format gguf)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | float16 | bfloat16 (default: the recipe's)."),
    shard_size: str = typer.Option("2GB", "--shard-size", help="Maximum shard size, e.g. 2GB."),
    fmt: str = typer.Option("hf", "--format", help="hf (a transformers directory) or gguf."),
    outtype: str = typer.Option("f16", "--outtype", help="GGUF tensor type: f32 | f16 | q8_0."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Write a deployable model: HF directory (config, tokenizer, shards, model card) or GGUF.

    A recipe merged before builds from the stored merge; one never merged is
    merged into the store and written in the same pass.

    Examples: persona build -o out/timmy ; persona build HEAD~1 -o out/timmy.gguf --format gguf
    """
    from persona.porcelain.build import build as run_build

    repo = open_repo()
    bar, update = _bar("building")
    with bar:
        result = run_build(repo, rev, out, dtype, shard_size, fmt, outtype, force, progress=update)
    if json_out:
        emit_json(result.to_json())
        return
    b = result.build
    how = "cached merge" if b.cached else f"merged in {b.seconds:.1f}s"
    typer.echo(f"built {short(result.commit)} -> {result.path} ({result.format}, {b.dtype}, {how})")


def register(app: typer.Typer) -> None:
    app.command()(merge)
    app.command()(build)
