"""commit, log, show, diff, rollback, branch, checkout, tag, reflog.

These never import torch: they read small JSON objects and refs only.
"""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from persona.cli.context import emit_json, open_repo, short
from persona.porcelain import history


def _fmt_alpha(value: float) -> str:
    return f"{value:+g}"


def _recipe_line(body: dict) -> str:
    vectors = " ".join(f"{v['name']}:{_fmt_alpha(v['alpha'])}" for v in body["vectors"])
    return f"{body['method']} on {body['base']['name']}: {vectors}"


def commit(
    file: Path = typer.Option(..., "-f", "--file", help="Recipe YAML (see recipes/)."),
    message: str = typer.Option(..., "-m", "--message", help="What changed and why."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Validate a recipe and record it as a commit on the current branch.

    Example: persona commit -f recipes/timmy.yaml -m "first recipe"
    """
    repo = open_repo()
    info = history.commit_file(repo, file, message)
    if json_out:
        emit_json(info.to_json())
    else:
        branch = repo.current_branch() or "detached HEAD"
        typer.echo(f"[{branch} {short(info.id)}] {info.message}")
        typer.echo(f"  {_recipe_line(info.recipe)}")


def log(
    rev: str = typer.Argument("HEAD", help="Where to start (default HEAD)."),
    n: int | None = typer.Option(None, "-n", help="Show at most N commits."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """History of recipes, newest first, with the AER of each commit that has one.

    Example: persona log -n 5
    """
    entries = history.log(open_repo(), rev, n)
    if json_out:
        emit_json([e.to_json() for e in entries])
        return
    if not entries:
        typer.echo("no commits yet: record a recipe with `persona commit -f RECIPE -m MSG`")
        return
    for entry in entries:
        refs = f" ({', '.join(entry.refs)})" if entry.refs else ""
        aer = f"  AER {entry.aer:.4f}" if entry.aer is not None else ""
        typer.echo(f"commit {short(entry.id)}{refs}")
        typer.echo(f"  {history.iso(entry.time)}  {entry.author}{aer}")
        typer.echo(f"  {entry.message}")
        typer.echo(f"  {_recipe_line(entry.recipe)}")
        typer.echo("")


def show(
    rev: str = typer.Argument("HEAD", help="A revision: id prefix, branch, tag, HEAD~N, HEAD@{N}."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show one commit and its full recipe.

    Example: persona show HEAD~1
    """
    from persona import recipes

    info = history.show(open_repo(), rev)
    if json_out:
        emit_json(info.to_json())
        return
    typer.echo(f"commit {info.id}")
    typer.echo(f"recipe {info.recipe_id}")
    if info.parents:
        typer.echo(f"parent {info.parents[0]}")
    typer.echo(f"author {info.author}")
    typer.echo(f"date   {history.iso(info.time)}")
    if info.aer is not None:
        typer.echo(f"AER    {info.aer:.4f}")
    typer.echo(f"\n    {info.message}\n")
    typer.echo(yaml.safe_dump(recipes.to_yaml_dict(info.recipe), sort_keys=False).rstrip())
    for v in info.recipe["vectors"]:
        typer.echo(f"# {v['name']} = vector {short(v['id'])}")


def diff(
    rev_a: str = typer.Argument(..., help="From this revision."),
    rev_b: str = typer.Argument("HEAD", help="To this revision."),
    weights: bool = typer.Option(False, "--weights", help="Also compare the merged weights "
                                                          "(norm of change per layer, cosine, sign conflicts)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """What changed between two recipes: vectors added/removed, alphas, method, parameters.

    Example: persona diff HEAD~1 HEAD
    """
    repo = open_repo()
    result = history.diff(repo, rev_a, rev_b)
    weight_report = None
    if weights:
        from persona.porcelain.weightdiff import weight_diff

        weight_report = weight_diff(repo, result.a, result.b)
    if json_out:
        data = result.to_json()
        if weight_report is not None:
            data["weights"] = weight_report.to_json()
        emit_json(data)
        return
    typer.echo(f"diff {short(result.a)}..{short(result.b)}")
    changes = result.changes
    if result.empty:
        typer.echo("  recipes are identical")
    for key, change in changes["params"].items():
        typer.echo(f"  {key}: {change['from']} -> {change['to']}")
    for v in changes["added"]:
        typer.echo(f"  + {v['name']} alpha {_fmt_alpha(v['alpha'])} density {v['density']:g}")
    for v in changes["removed"]:
        typer.echo(f"  - {v['name']} alpha {_fmt_alpha(v['alpha'])} density {v['density']:g}")
    for v in changes["changed"]:
        parts = []
        if "alpha" in v:
            parts.append(f"alpha {_fmt_alpha(v['alpha']['from'])} -> {_fmt_alpha(v['alpha']['to'])}")
        if "density" in v:
            parts.append(f"density {v['density']['from']:g} -> {v['density']['to']:g}")
        if "id" in v:
            parts.append(f"vector {short(v['id']['from'])} -> {short(v['id']['to'])}")
        typer.echo(f"  ~ {v['name']}: {', '.join(parts)}")
    if weight_report is not None:
        typer.echo("")
        typer.echo(weight_report.render())


def rollback(
    rev: str | None = typer.Argument(None, help="Commit to move the branch to (e.g. HEAD~1)."),
    to: str | None = typer.Option(None, "--to", help="Instead of REV: the last commit at or before this date."),
    message: str | None = typer.Option(None, "-m", "--message", help="Why (kept in the reflog)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Move the current branch back; the reflog keeps what it left, so this can be undone.

    Examples: persona rollback HEAD~1 ; persona rollback --to 2026-11-15 ;
    undo a rollback: persona rollback HEAD@{1}
    """
    move = history.rollback(open_repo(), rev, to, message)
    if json_out:
        emit_json(move.to_json())
    else:
        typer.echo(f"{move.ref.removeprefix('refs/heads/')}: {short(move.old)} -> {short(move.new)}")
        typer.echo(f"undo with: persona rollback {short(move.old)}")


def branch(
    name: str | None = typer.Argument(None, help="New branch name (omit to list branches)."),
    rev: str = typer.Argument("HEAD", help="Where the new branch starts."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List branches, or create one.

    Example: persona branch experiment HEAD~1
    """
    repo = open_repo()
    if name is None:
        branches = history.list_refs(repo, "branch")
        current = repo.current_branch()
        if json_out:
            emit_json({"current": current, "branches": branches})
            return
        if current and current not in branches:
            typer.echo(f"* {current} (no commits yet)")
        for b, oid in branches.items():
            typer.echo(f"{'*' if b == current else ' '} {b} {short(oid)}")
        return
    move = history.create_branch(repo, name, rev)
    if json_out:
        emit_json(move.to_json())
    else:
        typer.echo(f"created branch {name} at {short(move.new)}")


def checkout(
    name: str = typer.Argument(..., help="Branch to switch to."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Switch HEAD to another branch.

    Example: persona checkout experiment
    """
    move = history.checkout(open_repo(), name)
    if json_out:
        emit_json(move.to_json())
    else:
        typer.echo(f"switched to branch {name} ({short(move.new)})")


def tag(
    name: str | None = typer.Argument(None, help="Tag name (omit to list tags)."),
    rev: str = typer.Argument("HEAD", help="Commit to tag."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List tags, or tag a commit (tags never move).

    Example: persona tag v1
    """
    repo = open_repo()
    if name is None:
        tags = history.list_refs(repo, "tag")
        if json_out:
            emit_json(tags)
        else:
            for t, oid in tags.items():
                typer.echo(f"{t} {short(oid)}")
        return
    move = history.create_tag(repo, name, rev)
    if json_out:
        emit_json(move.to_json())
    else:
        typer.echo(f"tagged {short(move.new)} as {name}")


def reflog(
    ref: str = typer.Argument("HEAD", help="HEAD, a branch or a tag."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Every position a ref has had, newest first (REF@{N} names entry N).

    Example: persona reflog main
    """
    lines = history.reflog(open_repo(), ref)
    if json_out:
        emit_json([line.to_json() for line in lines])
        return
    for line in lines:
        typer.echo(f"{short(line.new)} {ref}@{{{line.index}}}: {line.message}  ({history.iso(line.time)})")


def register(app: typer.Typer) -> None:
    for command in (commit, log, show, diff, rollback, branch, checkout, tag, reflog):
        app.command()(command)
