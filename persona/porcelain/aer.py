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


def run(repo: Repository, rev: str, prompt: Path, probes: Path, window: int | None = None,
        tolerance: float = 0.05, max_new_tokens: int = 48, progress: Progress | None = None) -> AerRun:
    from persona.aer.evaluate import AerConfig, RunCache, evaluate_aer
    from persona.aer.probes import load_probes
    from persona.aer.report import to_json
    from persona.aer.runner import TransformersRunner
    from persona.aer.sections import load_prompt
    from persona.db.models import AerResultRow
    from persona.porcelain.engine import build_recipe
    from persona.porcelain.materialise import load_causal_lm

    commit_id = revparse.resolve(repo, rev)
    recipe_id = repo.commit(commit_id).recipe
    body = repo.recipe(recipe_id).body
    base_id = body["base"]["id"]
    doc = load_prompt(prompt)
    probe_list = load_probes(probes, sections=doc.names)
    c_total = context_window(repo, base_id, window)
    build = build_recipe(repo, recipe_id, dtype="float32")
    weights = repo.get(build.id, obj.Build).weights
    base_model, tokenizer = load_causal_lm(repo, base_id)
    recipe_model, _ = load_causal_lm(repo, base_id, weights=weights)
    result = evaluate_aer(
        base=TransformersRunner(base_model, tokenizer, model_id=f"base:{base_id}"),
        recipe=TransformersRunner(recipe_model, tokenizer, model_id=f"build:{build.id}"),
        prompt=doc, probes=probe_list, tokenizer=tokenizer, context_window=c_total,
        config=AerConfig(tolerance=tolerance, max_new_tokens=max_new_tokens),
        cache=RunCache(repo.cache_dir("aer")), progress=progress,
    )
    row = AerResultRow(commit_id=commit_id, recipe_id=recipe_id, prompt_sha256=_prompt_sha(prompt),
                       c_total=result.c_total, c_alignment_before=result.c_alignment_before,
                       c_alignment_after=result.c_alignment_after, aer_before=result.aer_before,
                       aer_after=result.aer_after, report=to_json(result), created=time.time())
    repo.db.write(lambda session: session.add(row))
    return AerRun(commit_id, recipe_id, result)


def history(repo: Repository, rev: str = "HEAD"):
    """AER per commit along the first-parent history, oldest first."""
    from sqlalchemy import select

    from persona.aer.report import HistoryPoint
    from persona.db.models import AerResultRow
    from persona.porcelain.history import log

    commits = log(repo, rev)
    if not commits:
        raise NotFound("no commits yet", "commit a recipe, then run `persona aer`")

    def work(session) -> dict[str, AerResultRow]:
        rows = session.execute(select(AerResultRow).where(AerResultRow.commit_id.in_([c.id for c in commits]))
                               .order_by(AerResultRow.created)).scalars().all()
        return {row.commit_id: (row.aer_before, row.aer_after) for row in rows}

    latest = repo.db.read(work)
    points = [HistoryPoint(f"{c.id[:8]} {c.message[:24]}", *latest[c.id]) for c in reversed(commits)
              if c.id in latest]
    if not points:
        raise NotFound("no AER results yet", "run `persona aer --prompt P --probes Q` on a commit")
    return points
