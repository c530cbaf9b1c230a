"""Garbage collection: delete what nothing can reach, and only once it is old.

Roots are every ref and every reflog entry younger than the grace period (so a
rollback stays undoable for that long). Builds count as reachable while their
recipe is. An unreachable object is deleted only if it is older than the grace
period too, so an object a concurrent writer has just stored, but not yet
pointed a ref at, is never taken.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from persona.errors import InvalidInput, PersonaError
from persona.store import objects as obj

if TYPE_CHECKING:
    from persona.repo import Repository

DEFAULT_GRACE = "14d"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not match:
        raise InvalidInput(f"cannot read duration {text!r}", "use a number and a unit: 30s, 10m, 2h, 14d, 2w")
    return float(match[1]) * _UNITS[match[2]]


@dataclass
class GcReport:
    dry_run: bool
    grace_seconds: float
    reachable: int = 0
    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept_young: int = 0
    temp_files: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "grace_seconds": self.grace_seconds, "reachable": self.reachable,
                "removed": self.removed, "bytes_freed": self.bytes_freed, "kept_young": self.kept_young,
                "temp_files": self.temp_files}


def reachable(repo: Repository, cutoff: float) -> set[str]:
    roots: set[str] = set()
    for _ref, value in repo.refs.all_refs():
        if not value.startswith("ref: "):
            roots.add(value)
    for ref in repo.refs.reflog_refs():
        for entry in repo.refs.reflog(ref):
            if entry.time >= cutoff:
                roots.update(v for v in (entry.old, entry.new) if v)
    marked: set[str] = set()

    def walk(start: set[str]) -> None:
        stack = [oid for oid in start if oid not in marked]
        while stack:
            oid = stack.pop()
            if oid in marked or not repo.objects.has(oid):
                continue
            marked.add(oid)
            kind = repo.objects.kind_of(oid)
            if kind in ("blob", "file"):
                continue
            try:
                _, payload = repo.objects.get(oid)
                stack.extend(t for t in obj.referenced_ids(kind, payload) if t not in marked)
            except PersonaError:
                continue  # fsck reports it; gc must not crash on it

    walk(roots)
    builds = set()
    for oid in repo.objects.iter_ids():
        if oid not in marked and repo.objects.kind_of(oid) == "build":
            try:
                if repo.get(oid, obj.Build).recipe in marked:
                    builds.add(oid)
            except PersonaError:
                continue
    walk(builds)
    return marked


def gc(repo: Repository, grace: str = DEFAULT_GRACE, dry_run: bool = False,
       now: float | None = None) -> GcReport:
    grace_seconds = parse_duration(grace)
    now = time.time() if now is None else now
    cutoff = now - grace_seconds
    report = GcReport(dry_run, grace_seconds)
    keep = reachable(repo, cutoff)
    report.reachable = len(keep)
    for oid in list(repo.objects.iter_ids()):
        if oid in keep:
            continue
        try:
            if repo.objects.mtime(oid) >= cutoff:
                report.kept_young += 1
                continue
            size = repo.objects.size(oid)
        except FileNotFoundError:
            continue
        report.removed.append(oid)
        report.bytes_freed += size
        if not dry_run:
            repo.objects.delete(oid)
    stale = repo.objects.stale_temp_files(min(grace_seconds, 3600.0))
    report.temp_files = len(stale)
    if not dry_run:
        for path in stale:
            path.unlink(missing_ok=True)
        if report.removed:
            _drop_index_rows(repo, set(report.removed))
    return report


def _drop_index_rows(repo: Repository, removed: set[str]) -> None:
    from sqlalchemy import delete

    from persona.db.models import AerResultRow, BaseRow, BuildRow, CommitRow, VectorRow

    def work(session) -> None:
        session.execute(delete(AerResultRow).where(AerResultRow.commit_id.in_(removed)))
        for model in (CommitRow, VectorRow, BaseRow, BuildRow):
            session.execute(delete(model).where(model.id.in_(removed)))

    repo.db.write(work)
