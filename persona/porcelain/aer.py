"""``persona aer``: the AER library (persona.aer) tied to the store.

The base model is the recipe's base, the recipe model is the recipe's build
(merged into the store on demand), model runs are cached under
``store/cache/aer`` keyed by model id (the base or build object id), prompt
render and probe, and every result is stored per commit in the database so
``persona log`` and ``persona aer --history`` show AER over time.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona.errors import NotFound
from persona.repo import Repository
from persona.store import objects as obj
from persona.store import revparse

Progress = Callable[[int, int, str], None]


@dataclass
class AerRun:
    commit: str
    recipe_id: str
    result: Any  # persona.aer.evaluate.AerResult


def _prompt_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def context_window(repo: Repository, base_id: str, explicit: int | None) -> int:
    from persona.aer.tokens import resolve_context_window

    base = repo.get(base_id, obj.Base)
    config = json.loads(repo.get_file(base.files["config.json"])) if "config.json" in base.files else {}
    return resolve_context_window(explicit, config)


def resolve_base(repo: Repository, rev: str | None, base: str | None) -> tuple[str | None, str]:
    """(commit id or None, base id): from a revision's recipe, else --base / the only base."""
    from persona.porcelain.models import default_base

    if base is None and repo.head() is not None:
        commit_id = revparse.resolve(repo, rev or "HEAD")
        return commit_id, repo.recipe(repo.commit(commit_id).recipe).body["base"]["id"]
    return None, default_base(repo, base)


def tokens_only(repo: Repository, prompt: Path, base: str | None = None, rev: str | None = None,
                window: int | None = None):
    """Token accounting alone: no model runs."""
    from persona.aer.sections import load_prompt
    from persona.aer.tokens import token_report
    from persona.porcelain.materialise import load_tokenizer

    _, base_id = resolve_base(repo, rev, base)
    return token_report(load_tokenizer(repo, base_id), load_prompt(prompt), context_window(repo, base_id, window))


def general_questions(path: Path | str | None = None) -> list[Any]:
    """The general-capability questions of the damage check: ``path``, else the shipped set."""
    from importlib import resources

    from persona.aer.probes import load_probes, parse_probes, safe_load_yaml

    if path is not None:
        return load_probes(path)
    text = resources.files("persona.aer").joinpath("data", "general.yaml").read_text(encoding="utf-8")
    return parse_probes(safe_load_yaml(text, "general.yaml"), "persona/aer/data/general.yaml")


def recipe_training_prompts(repo: Repository, recipe_id: str):
    """The training prompts of a recipe's vectors (the overlap check)."""
    from persona.aer.overlap import training_prompts

    body = repo.recipe(recipe_id).body
    return training_prompts(repo, {v["name"]: v["id"] for v in body["vectors"]})


def check_probes(repo: Repository | None, prompt: Path, probes: Path, rev: str | None = "HEAD"):
    """Lint a probe file against a prompt (leaks, overlaps, too few) without running any model."""
    from persona.aer.lint import lint_probes
    from persona.aer.probes import load_probes
    from persona.aer.sections import load_prompt

    doc = load_prompt(prompt)
    probe_list = load_probes(probes, sections=doc.names)
    training = None
    commit_id = None
    if repo is not None and (rev not in (None, "HEAD") or repo.head() is not None):
        commit_id = revparse.resolve(repo, rev or "HEAD")
        training = recipe_training_prompts(repo, repo.commit(commit_id).recipe)
    return commit_id, lint_probes(doc, probe_list, training)


def run(repo: Repository, rev: str, prompt: Path, probes: Path, window: int | None = None,
        tolerance: float = 0.05, max_new_tokens: int = 48, progress: Progress | None = None,
        general: Path | str | None = None, damage_check: bool = True, min_probes: int | None = None) -> AerRun:
    from persona.aer.evaluate import AerConfig, evaluate_aer
    from persona.aer.grid import RunCache
    from persona.aer.probes import load_probes
    from persona.aer.report import to_json
    from persona.aer.runner import TransformersRunner
    from persona.aer.sections import load_prompt
    from persona.cpu import configure_torch
    from persona.db.models import AerResultRow
    from persona.porcelain.engine import build_recipe
    from persona.porcelain.materialise import load_causal_lm

    commit_id = revparse.resolve(repo, rev)
    recipe_id = repo.commit(commit_id).recipe
    body = repo.recipe(recipe_id).body
    base_id = body["base"]["id"]
    doc = load_prompt(prompt)
    probe_list = load_probes(probes, sections=doc.names)
    general_list = general_questions(general) if damage_check else None
    c_total = context_window(repo, base_id, window)
    configure_torch()
    build = build_recipe(repo, recipe_id, dtype="float32")
    weights = repo.get(build.id, obj.Build).weights
    base_model, tokenizer = load_causal_lm(repo, base_id)
    recipe_model, _ = load_causal_lm(repo, base_id, weights=weights)
    config = AerConfig(tolerance=tolerance, max_new_tokens=max_new_tokens,
                       **({"min_probes": min_probes} if min_probes is not None else {}))
    result = evaluate_aer(
        base=TransformersRunner(base_model, tokenizer, model_id=f"base:{base_id}"),
        recipe=TransformersRunner(recipe_model, tokenizer, model_id=f"build:{build.id}"),
        prompt=doc, probes=probe_list, tokenizer=tokenizer, context_window=c_total, config=config,
        cache=RunCache(repo.cache_dir("aer")), progress=progress,
        training=recipe_training_prompts(repo, recipe_id), general=general_list,
    )
    row = AerResultRow(commit_id=commit_id, recipe_id=recipe_id, prompt_sha256=_prompt_sha(prompt),
                       probes_sha256=_prompt_sha(probes), prompt_name=Path(prompt).name[:255],
                       probes_name=Path(probes).name[:255],
                       c_total=result.c_total, c_alignment_before=result.c_alignment_before,
                       c_alignment_after=result.c_alignment_after, aer_before=result.aer_before,
                       aer_after=result.aer_after, report=to_json(result), created=time.time())
    repo.db.write(lambda session: session.add(row))
    return AerRun(commit_id, recipe_id, result)


def history(repo: Repository, rev: str = "HEAD", prompt: Path | None = None, probes: Path | None = None):
    """AER per (commit, prompt content, probe set) along the first-parent history, oldest first.

    A commit measured with two probe files has two points; re-measuring with the
    same prompt and probes replaces nothing but is shown once (the newest).
    ``prompt`` / ``probes`` keep only the points measured with those files' contents.
    """
    from sqlalchemy import select

    from persona.aer.report import HistoryPoint
    from persona.db.models import AerResultRow
    from persona.porcelain.history import log

    commits = log(repo, rev)
    if not commits:
        raise NotFound("no commits yet", "commit a recipe, then run `persona aer`")
    want_prompt = _prompt_sha(prompt) if prompt is not None else None
    want_probes = _prompt_sha(probes) if probes is not None else None

    def work(session) -> dict[tuple[str, str, str | None], tuple]:
        rows = session.execute(select(AerResultRow).where(AerResultRow.commit_id.in_([c.id for c in commits]))
                               .order_by(AerResultRow.created, AerResultRow.id)).scalars().all()
        out = {}
        for row in rows:
            dropped = row.report.get("dropped", []) if isinstance(row.report, dict) else []
            out[(row.commit_id, row.prompt_sha256, row.probes_sha256)] = (
                row.aer_before, row.aer_after, row.prompt_name, row.probes_name, list(dropped))
        return out

    latest = repo.db.read(work)
    points = []
    for c in reversed(commits):
        for (commit_id, prompt_sha, probes_sha), (before, after, prompt_name, probes_name, dropped) in latest.items():
            if commit_id != c.id or (want_prompt and prompt_sha != want_prompt) \
                    or (want_probes and probes_sha != want_probes):
                continue
            points.append(HistoryPoint(f"{c.id[:8]} {c.message[:24]}", before, after, commit=c.id,
                                       message=c.message, prompt_name=prompt_name, prompt_sha256=prompt_sha,
                                       probes_name=probes_name, probes_sha256=probes_sha, dropped=dropped))
    if not points:
        raise NotFound("no AER results yet" + (" for these prompt and probe files" if prompt or probes else ""),
                       "run `persona aer --prompt P --probes Q` on a commit")
    return points
