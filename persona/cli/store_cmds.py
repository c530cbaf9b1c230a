"""init, fsck, gc: creating and looking after a store."""

from __future__ import annotations

from pathlib import Path

import typer

from persona.cli.context import STATE, emit_json, err, open_repo, progress_bar, short


def init(
    path: Path | None = typer.Argument(None, help="Where to create the store (default: ./store or --store)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create a store (objects + refs + SQLite database). Safe to run twice.

    Example: persona init
    """
    from persona.repo import Repository

    root = path or STATE.store or Path("store")
    repo, created = Repository.init(root)
    if json_out:
        emit_json({"store": str(repo.root.resolve()), "created": created})
    else:
        typer.echo(f"{'Initialised empty' if created else 'Reinitialised existing'} persona store in "
                   f"{repo.root.resolve()}")


def fsck(
    repair: bool = typer.Option(False, "--repair", help="Rebuild the database index from the object store."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Re-hash every object and follow every reference; exit 1 on any problem.

    Example: persona fsck --json
    """
    from persona.store.fsck import fsck as run_fsck
    from persona.store.fsck import repair_index

    repo = open_repo()
    with progress_bar("checking objects", None) as bar:
        task = bar.add_task("checking objects", total=None)
        report = run_fsck(repo, progress=lambda done, total: bar.update(task, completed=done, total=total),
                          check_db=not repair)
    if repair:
        report.repaired = repair_index(repo)
        report.problems = [p for p in report.problems if p.what != "db-orphan"]
    if json_out:
        emit_json(report.to_json())
    else:
        typer.echo(f"checked {report.objects} objects ({report.bytes / 1e6:.1f} MB), {report.refs} refs, "
                   f"{report.db_rows} index rows")
        if report.repaired:
            typer.echo("repaired index: " + ", ".join(f"{n} {k}" for k, n in report.repaired.items()))
        for problem in report.problems:
            typer.echo(f"{problem.what}: {short(problem.id)}: {problem.message}")
        typer.echo("ok" if report.ok else f"{len(report.problems)} problem(s) found")
    if not report.ok:
        raise typer.Exit(1)


def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would go, delete nothing."),
    prune_older_than: str = typer.Option("14d", "--prune-older-than",
                                         help="Grace period: unreachable objects and reflog entries "
                                              "younger than this are kept (e.g. 30m, 2h, 14d)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Delete unreachable objects older than the grace period.

    Anything a ref or a recent reflog entry reaches is kept, so rollbacks stay undoable.

    Example: persona gc --dry-run --prune-older-than 1h
    """
    from persona.store.gc import gc as run_gc

    report = run_gc(open_repo(), prune_older_than, dry_run)
    if json_out:
        emit_json(report.to_json())
        return
    verb = "would remove" if dry_run else "removed"
    for oid in report.removed:
        typer.echo(f"{verb} {oid}")
    typer.echo(f"{verb} {len(report.removed)} object(s), {report.bytes_freed / 1e6:.2f} MB; kept "
               f"{report.reachable} reachable and {report.kept_young} younger than {prune_older_than}")
    if report.temp_files:
        err(f"{'would delete' if dry_run else 'deleted'} {report.temp_files} leftover temp file(s)")


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(fsck)
    app.command()(gc)
