"""persona aer: how much of the system prompt a recipe lets you drop."""

from __future__ import annotations

from pathlib import Path

import typer

from persona.cli.context import emit_json, open_repo, progress_bar, short


def aer(
    rev: str = typer.Argument("HEAD", help="The commit whose recipe to measure."),
    prompt: Path | None = typer.Option(None, "--prompt", help="System prompt with ## sections (e.g. SOUL.md)."),
    probes: Path | None = typer.Option(None, "--probes", help="Probe YAML: id, section, messages, checks."),
    context_window: int | None = typer.Option(None, "--context-window",
                                              help="C_total (default: the model's max_position_embeddings)."),
    tolerance: float = typer.Option(0.05, "--tolerance", help="Pass rates within this count as equal."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", help="Greedy answer length per probe."),
    tokens_only: bool = typer.Option(False, "--tokens-only", help="Token accounting alone, no model runs."),
    base: str | None = typer.Option(None, "--base", help="With --tokens-only: the base whose tokenizer to use."),
    history_: bool = typer.Option(False, "--history", help="AER per commit over time."),
    plot: Path | None = typer.Option(None, "--plot", help="With --history: write a PNG."),
    prom: Path | None = typer.Option(None, "--prom", help="Write a Prometheus textfile (atomically)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Measure the Alignment Efficiency Ratio (AER = 1 - alignment prompt tokens / context window)
    of a recipe, section by section: which sections of the prompt its weights make droppable.

    Examples: persona aer --prompt examples/aer/SOUL.md --probes examples/aer/probes.yaml ;
    persona aer --tokens-only --prompt examples/aer/SOUL.md ; persona aer --history --plot aer.png
    """
    from persona.errors import InvalidInput
    from persona.porcelain import aer as porcelain

    repo = open_repo()
    if history_:
        from persona.aer.report import format_history, plot_history

        points = porcelain.history(repo, rev)
        if plot is not None:
            plot_history(points, plot)
        if json_out:
            emit_json([p.__dict__ for p in points])
        else:
            typer.echo(format_history(points))
            if plot is not None:
                typer.echo(f"wrote {plot}")
        return
    if prompt is None:
        raise InvalidInput("--prompt is required", "e.g. persona aer --prompt examples/aer/SOUL.md --probes ...")
    if tokens_only:
        from persona.aer.report import format_tokens, tokens_to_json, write_prom

        report = porcelain.tokens_only(repo, prompt, base, None if base else rev, context_window)
        if prom is not None:
            write_prom(prom, report, recipe_label=base or rev)
        if json_out:
            emit_json(tokens_to_json(report))
        else:
            typer.echo(format_tokens(report))
        return
    if probes is None:
        raise InvalidInput("--probes is required to measure a recipe", "or pass --tokens-only")
    from persona.aer.report import format_result, to_json, write_prom

    bar = progress_bar("probing", None)
    task = bar.add_task("probing", total=None)
    with bar:
        run = porcelain.run(repo, rev, prompt, probes, context_window, tolerance, max_new_tokens,
                            progress=lambda done, total, label: bar.update(task, completed=done, total=total))
    if prom is not None:
        write_prom(prom, run.result, recipe_label=short(run.commit))
    if json_out:
        emit_json({"commit": run.commit, "recipe": run.recipe_id, **to_json(run.result)})
    else:
        typer.echo(f"AER of commit {short(run.commit)} (recipe {short(run.recipe_id)})")
        typer.echo(format_result(run.result))


def register(app: typer.Typer) -> None:
    app.command()(aer)
