"""Recipe history: commit, log, show, diff, rollback, branch, checkout, tag, reflog.

Nothing here imports torch: these verbs must answer in a fraction of a second.
Order of writes in ``commit``: objects first, then the database index, then the
ref (compare-and-swap). A crash at any point leaves either no new commit on the
branch (at most an unreferenced commit object and its index row, which gc
removes together) or a complete, indexed one: whatever a ref reaches is indexed.
Before pointing anything at an existing object (the recipe's base and vectors,
a rollback's target) the object is freshened, so a concurrent gc spares it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona import faults, recipes
from persona.errors import Conflict, InvalidInput, NotFound, PersonaError
from persona.repo import Repository
from persona.store import objects as obj
from persona.store import revparse
from persona.store.refs import NAMESPACES, validate_name


def author_name() -> str:
    return os.environ.get("PERSONA_AUTHOR") or getpass.getuser() or "unknown"


@dataclass
class CommitInfo:
    id: str
    recipe_id: str
    parents: list[str]
    author: str
    time: int
    message: str
    recipe: dict[str, Any]
    refs: list[str] = field(default_factory=list)
    aer: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "recipe_id": self.recipe_id, "parents": self.parents, "author": self.author,
            "time": self.time, "date": iso(self.time), "message": self.message,
            "recipe": recipes.to_yaml_dict(self.recipe), "refs": self.refs, "aer": self.aer,
        }


def iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def commit_info(repo: Repository, oid: str, ref_names: dict[str, list[str]] | None = None) -> CommitInfo:
    commit = repo.commit(oid)
    body = repo.recipe(commit.recipe).body
    return CommitInfo(oid, commit.recipe, list(commit.parents), commit.author, commit.time,
                      commit.message, body, (ref_names or {}).get(oid, []))


def _index_commit(repo: Repository, oid: str, commit: obj.Commit) -> None:
    from persona.db.models import CommitRow

    def work(session) -> None:
        session.merge(CommitRow(id=oid, recipe_id=commit.recipe, parents=list(commit.parents),
                                author=commit.author, time=commit.time, message=commit.message))

    repo.db.write(work)


def _unindex_commit(repo: Repository, oid: str) -> None:
    """Best effort: drop the row of a commit whose ref update failed (gc would, later)."""
    from sqlalchemy import delete

    from persona.db.models import CommitRow

    with contextlib.suppress(PersonaError):
        repo.db.write(lambda session: session.execute(delete(CommitRow).where(CommitRow.id == oid)))


def _hold(repo: Repository, ids: list[str]) -> None:
    """Freshen objects about to be pointed at, so a concurrent gc spares them; refuse if one is gone."""
    for oid in ids:
        if not repo.objects.freshen(oid):
            raise NotFound(f"object {oid[:12]} is no longer in the store",
                           "it was garbage-collected or removed; run `persona fsck`")


def _advance_head(repo: Repository, new: str, expected: str | None, message: str) -> str:
    """Move the current branch (or a detached HEAD) from ``expected`` to ``new``."""
    _hold(repo, [new])
    target = repo.refs.head_target() or "HEAD"
    repo.refs.update(target, new, expected=expected, message=message)
    return target


def commit_recipe(repo: Repository, recipe: obj.RecipeObject, message: str,
                  author: str | None = None, now: int | None = None) -> CommitInfo:
    """Record a resolved recipe as a new commit on the current branch."""
    if not message.strip():
        raise InvalidInput("empty commit message", 'pass -m "what changed and why"')
    recipe_id = repo.put(recipe)
    _hold(repo, recipe.referenced_ids())
    parent = repo.head()
    commit = obj.Commit(recipe_id, (parent,) if parent else (), author or author_name(),
                        int(now if now is not None else time.time()), message.strip())
    oid = repo.put(commit)
    faults.checkpoint("commit.objects")
    _index_commit(repo, oid, commit)
    try:
        _advance_head(repo, oid, parent, f"commit: {commit.message.splitlines()[0]}")
    except PersonaError:
        _unindex_commit(repo, oid)  # the commit never made it onto the branch
        raise
    return commit_info(repo, oid)


def commit_file(repo: Repository, path: Path, message: str, author: str | None = None) -> CommitInfo:
    spec = recipes.load(path)
    return commit_recipe(repo, recipes.resolve(repo, spec), message, author)


def ref_names_by_commit(repo: Repository) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    current = repo.current_branch()
    for namespace, label in (("branch", ""), ("tag", "tag: ")):
        for name, oid in repo.refs.list(namespace).items():
            text = f"HEAD -> {name}" if namespace == "branch" and name == current else f"{label}{name}"
            names.setdefault(oid, []).append(text)
    if current is None and (head := repo.head()):
        names.setdefault(head, []).insert(0, "HEAD")
    return names


def latest_aer(repo: Repository, commit_ids: list[str]) -> dict[str, float]:
    """The newest AER measured for each commit (only when the database has any)."""
    if not commit_ids:
        return {}
    from sqlalchemy import select

    from persona.db.models import AerResultRow

    def work(session) -> dict[str, float]:
        rows = session.execute(
            select(AerResultRow.commit_id, AerResultRow.aer_after, AerResultRow.created)
            .where(AerResultRow.commit_id.in_(commit_ids)).order_by(AerResultRow.created)
        ).all()
        return {row.commit_id: row.aer_after for row in rows}

    return repo.db.read(work)


def log(repo: Repository, rev: str = "HEAD", limit: int | None = None) -> list[CommitInfo]:
    """First-parent history from ``rev``, newest first."""
    if rev == "HEAD" and repo.head() is None:
        return []
    oid: str | None = revparse.resolve(repo, rev)
    names = ref_names_by_commit(repo)
    out: list[CommitInfo] = []
    while oid and (limit is None or len(out) < limit):
        info = commit_info(repo, oid, names)
        out.append(info)
        oid = info.parents[0] if info.parents else None
    aers = latest_aer(repo, [c.id for c in out])
    for info in out:
        info.aer = aers.get(info.id)
    return out


def show(repo: Repository, rev: str) -> CommitInfo:
    oid = revparse.resolve(repo, rev)
    info = commit_info(repo, oid, ref_names_by_commit(repo))
    info.aer = latest_aer(repo, [oid]).get(oid)
    return info


@dataclass
class RecipeDiff:
    a: str
    b: str
    changes: dict[str, Any]

    @property
    def empty(self) -> bool:
        c = self.changes
        return not (c["params"] or c["added"] or c["removed"] or c["changed"])

    def to_json(self) -> dict[str, Any]:
        return {"from": self.a, "to": self.b, **self.changes}


def diff(repo: Repository, rev_a: str, rev_b: str) -> RecipeDiff:
    a = revparse.resolve(repo, rev_a)
    b = revparse.resolve(repo, rev_b)
    body_a = repo.recipe(repo.commit(a).recipe).body
    body_b = repo.recipe(repo.commit(b).recipe).body
    return RecipeDiff(a, b, recipes.diff(body_a, body_b))


@dataclass
class RefMove:
    ref: str
    old: str | None
    new: str

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "old": self.old, "new": self.new}


def commit_at_or_before(repo: Repository, when: dt.datetime) -> str:
    """The last commit on the current branch's first-parent line made at or before ``when``."""
    stamp = when.timestamp()
    oid = repo.head()
    while oid:
        commit = repo.commit(oid)
        if commit.time <= stamp:
            return oid
        oid = commit.parents[0] if commit.parents else None
    raise NotFound(f"no commit on this branch at or before {when:%Y-%m-%d %H:%M}",
                   "see `persona log` for the dates")


def parse_date(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput(f"cannot read date {text!r}", "use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from exc
    if len(text) == 10:  # a bare date means the end of that day
        value = value.replace(hour=23, minute=59, second=59)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def rollback(repo: Repository, rev: str | None = None, to: str | None = None,
             message: str | None = None) -> RefMove:
    """Point the current branch at an earlier commit; the reflog keeps the rest."""
    if (rev is None) == (to is None):
        raise InvalidInput("rollback needs exactly one of REV or --to DATE",
                           "e.g. `persona rollback HEAD~1` or `persona rollback --to 2026-11-15`")
    target = commit_at_or_before(repo, parse_date(to)) if to else revparse.resolve(repo, rev or "")
    old = repo.head()
    if old is None:
        raise NotFound("nothing to roll back: the branch has no commits", "commit a recipe first")
    note = f"rollback: to {target[:12]}" + (f": {message}" if message else "")
    ref = _advance_head(repo, target, old, note)
    return RefMove(ref, old, target)


def create_branch(repo: Repository, name: str, rev: str = "HEAD") -> RefMove:
    validate_name(name, "branch name")
    target = revparse.resolve(repo, rev)
    ref = f"{NAMESPACES['branch']}/{name}"
    if repo.refs.read_raw(ref) is not None:
        raise Conflict(f"branch {name!r} already exists", "choose another name or `persona checkout` it")
    _hold(repo, [target])
    repo.refs.update(ref, target, expected=None, message=f"branch: created from {rev}")
    return RefMove(ref, None, target)


def checkout(repo: Repository, name: str) -> RefMove:
    ref = f"{NAMESPACES['branch']}/{name}"
    if repo.refs.read_raw(ref) is None:
        branches = ", ".join(repo.refs.list("branch")) or "none"
        raise NotFound(f"no branch named {name!r}", f"branches: {branches}; create one with `persona branch`")
    old = repo.head()
    repo.refs.update("HEAD", ref, message=f"checkout: moving to {name}", symbolic=True)
    new = repo.refs.resolve(ref)
    return RefMove("HEAD", old, new or "")


def create_tag(repo: Repository, name: str, rev: str = "HEAD") -> RefMove:
    validate_name(name, "tag name")
    target = revparse.resolve(repo, rev)
    ref = f"{NAMESPACES['tag']}/{name}"
    if repo.refs.read_raw(ref) is not None:
        raise Conflict(f"tag {name!r} already exists", "tags do not move; choose another name")
    _hold(repo, [target])
    repo.refs.update(ref, target, expected=None, message=f"tag: {rev}")
    return RefMove(ref, None, target)


def list_refs(repo: Repository, namespace: str) -> dict[str, str]:
    return repo.refs.list(namespace)


@dataclass
class ReflogLine:
    index: int
    old: str | None
    new: str | None
    time: float
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "old": self.old, "new": self.new, "time": self.time,
                "date": iso(self.time), "message": self.message}


def reflog(repo: Repository, ref: str = "HEAD") -> list[ReflogLine]:
    """Newest first; index N is what ``ref@{N}`` resolves to."""
    if ref != "HEAD" and not ref.startswith("refs/"):
        ref = f"refs/heads/{ref}" if repo.refs.read_raw(f"refs/heads/{ref}") else f"refs/tags/{ref}"
    entries = repo.refs.reflog(ref)
    return [ReflogLine(i, e.old, e.new, e.time, e.message) for i, e in enumerate(reversed(entries))]
