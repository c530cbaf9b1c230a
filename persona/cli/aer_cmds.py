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
    history_: bool = typer.Option(False, "--history", help="AER per commit over time (with --prompt/--probes: "
                                                           "only results measured with those files)."),
    check_probes: bool = typer.Option(False, "--check-probes", help="Lint the probes without a model: leaks, "
                                                                    "overlap with training prompts, too few."),
    general: Path | None = typer.Option(None, "--general", help="General questions for the damage check "
                                                                "(default: persona's shipped set)."),
    damage_check: bool = typer.Option(True, "--damage-check/--no-damage-check",
                                      help="Ask general questions without a system prompt, base vs recipe."),
    min_probes: int | None = typer.Option(None, "--min-probes", help="Fewest usable probes for a DROP (default 8)."),
    plot: Path | None = typer.Option(None, "--plot", help="With --history: write a PNG."),
    prom: Path | None = typer.Option(None, "--prom", help="Write a Prometheus textfile (atomically)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Measure the Alignment Efficiency Ratio (AER = 1 - alignment prompt tokens / context window)
    of a recipe, section by section: which sections of the prompt its weights make droppable.

    Examples: persona aer --prompt examples/aer/SOUL.md --probes examples/aer/probes.yaml ;
    persona aer --check-probes --prompt examples/aer/SOUL.md --probes examples/aer/probes.yaml ;
    persona aer --tokens-only --prompt examples/aer/SOUL.md ; persona aer --history --plot aer.png
    """
    from persona.errors import InvalidInput
    from persona.porcelain import aer as porcelain

    if check_probes:
        _check_probes(rev, prompt, probes, json_out)
        return
    repo = open_repo()
    if history_:
        from persona.aer.report import format_history, plot_history

        points = porcelain.history(repo, rev, prompt, probes)
        if plot is not None:
            plot_history(points, plot)
        if json_out:
            emit_json([{**p.__dict__, "measured_with": p.measured_with} for p in points])
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
                            progress=lambda done, total, label: bar.update(task, completed=done, total=total),
                            general=general, damage_check=damage_check, min_probes=min_probes)
    if prom is not None:
        write_prom(prom, run.result, recipe_label=short(run.commit))
    if json_out:
        emit_json({"commit": run.commit, "recipe": run.recipe_id, **to_json(run.result)})
    else:
        typer.echo(f"AER of commit {short(run.commit)} (recipe {short(run.recipe_id)})")
        typer.echo(format_result(run.result))


def _check_probes(rev: str, prompt: Path | None, probes: Path | None, json_out: bool) -> None:
    """``--check-probes``: the lint report; uses the store (for overlap) only when there is one."""
    from persona.errors import InvalidInput, NotFound
    from persona.porcelain import aer as porcelain

    if prompt is None or probes is None:
        raise InvalidInput("--check-probes needs --prompt and --probes",
                           "e.g. persona aer --check-probes --prompt SOUL.md --probes probes.yaml")
    try:
        repo = open_repo()
    except NotFound:
        repo = None  # no store: leaks and counts only
    commit, lint = porcelain.check_probes(repo, prompt, probes, rev)
    if json_out:
        emit_json({"commit": commit, **lint.to_json()})
        return
    typer.echo(f"probes {probes} against {prompt}" + (f" and the recipe of {short(commit)}" if commit else ""))
    for name, section in lint.sections.items():
        status = "too few" if section.too_few else "ok"
        if section.leaks:
            status = "LEAK"
        typer.echo(f"  {name:12} {section.probes:3} probes, {section.usable:3} usable  {status}")
        for leak in section.leaks:
            typer.echo(f"    leak: {leak.describe()}")
        for overlap in section.overlaps:
            typer.echo(f"    overlap: probe {overlap.probe_id} ~ {overlap.training_prompt!r} "
                       f"(vector {overlap.vector}, similarity {overlap.similarity:.2f})")
    for note in lint.notes:
        typer.echo(f"  note: {note}")


def register(app: typer.Typer) -> None:
    app.command()(aer)
