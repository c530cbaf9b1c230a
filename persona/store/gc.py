"""Garbage collection: delete what nothing can reach, and only once it is old.

Roots are every ref, every reflog entry younger than the grace period (so a
rollback stays undoable for that long) and every object younger than it (a
concurrent writer's fresh objects, and whatever they point to). Builds count
as reachable while their recipe is. An unreachable object is deleted only if it
is older than the grace period too.

Safe against crashes and concurrent writers:

- reflog entries older than the grace period that mention a doomed object are
  expired *first*, so a kill at any later point leaves no reflog line pointing
  at a deleted object;
- doomed objects are deleted referrers first (a commit before its recipe, a
  tree before its blobs) and each one's index row goes just before it, so at
  every instant every remaining object and row points only at objects that are
  still there, and ``fsck`` stays clean however gc is interrupted;
- each object's mtime is looked at again just before it goes: a writer that
  reuses an object freshens it first (``ObjectStore.freshen``), and then that
  object and everything it points to are spared.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona import faults
from persona.errors import InvalidInput, PersonaError
from persona.fsutil import describe_os_error
from persona.store import objects as obj

if TYPE_CHECKING:
    from persona.repo import Repository

DEFAULT_GRACE = "14d"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
INDEXED_KINDS = ("commit", "vector", "base", "build")
# Temp files of a write in progress are touched as it writes; one older than
# this (capped by the grace period, but never below the floor) is a leftover.
TEMP_GRACE_CAP_S = 3600.0
TEMP_GRACE_FLOOR_S = 600.0


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
    reflog_expired: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "grace_seconds": self.grace_seconds, "reachable": self.reachable,
                "removed": self.removed, "bytes_freed": self.bytes_freed, "kept_young": self.kept_young,
                "temp_files": self.temp_files, "reflog_expired": self.reflog_expired}


def _edges(repo: Repository, oid: str) -> list[str]:
    """The ids an object points at; none when it is a blob or file, gone, or unreadable."""
    try:
        kind = repo.objects.kind_of(oid)
        if kind in ("blob", "file"):
            return []
        _, payload = repo.objects.get(oid)
        return obj.referenced_ids(kind, payload)
    except PersonaError:
        return []  # missing (a concurrent gc) or corrupt (fsck reports it): no edges to follow


def _walk(repo: Repository, start: set[str], marked: set[str]) -> None:
    stack = [oid for oid in start if oid not in marked]
    while stack:
        oid = stack.pop()
        if oid in marked or not repo.objects.has(oid):
            continue
        marked.add(oid)
        stack.extend(t for t in _edges(repo, oid) if t not in marked)


def reachable(repo: Repository, cutoff: float) -> set[str]:
    """Everything a ref, a reflog entry at or after ``cutoff``, or a live recipe's build reaches."""
    roots: set[str] = set()
    for _ref, value in repo.refs.all_refs():
        if not value.startswith("ref: "):
            roots.add(value)
    for ref in repo.refs.reflog_refs():
        for entry in repo.refs.reflog(ref):
            if entry.time >= cutoff:
                roots.update(v for v in (entry.old, entry.new) if v)
    marked: set[str] = set()
    _walk(repo, roots, marked)
    builds = set()
    for oid in repo.objects.iter_ids():
        if oid in marked:
            continue
        try:
            if repo.objects.kind_of(oid) == "build" and repo.get(oid, obj.Build).recipe in marked:
                builds.add(oid)
        except PersonaError:
            continue
    _walk(repo, builds, marked)
    return marked


def _mtime(repo: Repository, oid: str) -> float | None:
    try:
        return repo.objects.mtime(oid)
    except (FileNotFoundError, PersonaError):
        return None


def _referrers_first(repo: Repository, doomed: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Doomed ids ordered so that every object comes before the objects it points to."""
    members = set(doomed)
    edges = {oid: [t for t in _edges(repo, oid) if t in members and t != oid] for oid in doomed}
    pending = dict.fromkeys(doomed, 0)
    for targets in edges.values():
        for target in targets:
            pending[target] += 1
    ready = sorted(oid for oid, count in pending.items() if count == 0)
    order: list[str] = []
    while ready:
        oid = ready.pop()
        order.append(oid)
        for target in edges[oid]:
            pending[target] -= 1
            if pending[target] == 0:
                ready.append(target)
    # Content addressing rules out cycles; anything left (impossible) goes last.
    order += sorted(oid for oid in doomed if oid not in set(order))
    return order, edges


def gc(repo: Repository, grace: str = DEFAULT_GRACE, dry_run: bool = False,
       now: float | None = None) -> GcReport:
    grace_seconds = parse_duration(grace)
    now = time.time() if now is None else now
    cutoff = now - grace_seconds
    report = GcReport(dry_run, grace_seconds)
    keep = reachable(repo, cutoff)
    report.reachable = len(keep)
    doomed: list[str] = []
    young: set[str] = set()
    for oid in list(repo.objects.iter_ids()):
        if oid in keep:
            continue
        mtime = _mtime(repo, oid)
        if mtime is None:
            continue
        if mtime >= cutoff:
            young.add(oid)
        else:
            doomed.append(oid)
    # What a young object points to is in use by whoever just wrote it.
    _walk(repo, young, keep)
    report.kept_young = len(young)
    doomed = [oid for oid in doomed if oid not in keep]
    order, edges = _referrers_first(repo, doomed)
    doomed_set = set(order)

    def expired(entry) -> bool:
        return entry.time < cutoff and (entry.old in doomed_set or entry.new in doomed_set)

    for ref in repo.refs.reflog_refs():
        dropped = [e for e in repo.refs.reflog(ref) if expired(e)]
        if dropped and not dry_run:  # rewrite (under the log's lock) only a log that has lines to drop
            dropped = repo.refs.expire_reflog(ref, expired)
        report.reflog_expired += [{"ref": ref, **e.to_json()} for e in dropped]

    spared: set[str] = set()
    for oid in order:
        if oid in spared:
            continue
        mtime = _mtime(repo, oid)
        if mtime is None or mtime >= cutoff:
            # Freshened (reused by a writer) or removed by another gc since we
            # looked: spare it and everything it points to.
            stack = [oid]
            while stack:
                item = stack.pop()
                if item not in spared:
                    spared.add(item)
                    stack.extend(edges.get(item, []))
            continue
        try:
            size = repo.objects.size(oid)
        except (FileNotFoundError, PersonaError):
            continue
        if not dry_run:
            try:
                kind: str | None = repo.objects.kind_of(oid)
            except PersonaError:
                kind = None  # unreadable: drop any row naming it all the same
            try:
                faults.checkpoint("gc.delete")
                if kind is None or kind in INDEXED_KINDS:
                    _drop_index_rows(repo, {oid})
                repo.objects.delete(oid)
            except OSError as exc:
                raise describe_os_error(exc, getattr(repo.objects, "root", repo.root)) from exc
        report.removed.append(oid)
        report.bytes_freed += size
    if report.removed and not dry_run:
        _drop_verified_records(repo, set(report.removed))
    temp_grace = max(min(grace_seconds, TEMP_GRACE_CAP_S), TEMP_GRACE_FLOOR_S)
    stale = [*repo.objects.stale_temp_files(temp_grace), *_stale_ref_temps(repo.root, now - temp_grace)]
    report.temp_files = len(stale)
    if not dry_run:
        for path in stale:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise describe_os_error(exc, path) from exc
    return report


def _stale_ref_temps(root: Path, cutoff: float) -> list[Path]:
    """Temp files of ref and reflog writes (``.<name>.*.tmp``) left by a crash."""
    stale = []
    candidates = list(root.glob(".HEAD.*.tmp"))
    for folder in ("refs", "logs"):
        if (root / folder).is_dir():
            candidates += (root / folder).rglob(".*.tmp")
    for path in candidates:
        try:
            if path.stat().st_mtime < cutoff:
                stale.append(path)
        except FileNotFoundError:
            continue
    return stale


def _drop_verified_records(repo: Repository, removed: set[str]) -> None:
    """Forget the file identities of deleted blobs (store.verify_cache): a stale record is
    harmless (a re-created file has another identity) but would only grow the table."""
    from sqlalchemy import delete

    from persona.db.models import VerifiedBlobRow

    ids = sorted(removed)
    for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        chunk = ids[start : start + 500]
        repo.db.write(lambda session, chunk=chunk: session.execute(
            delete(VerifiedBlobRow).where(VerifiedBlobRow.oid.in_(chunk))))


def _drop_index_rows(repo: Repository, removed: set[str]) -> None:
    from sqlalchemy import delete

    from persona.db.models import AerResultRow, BaseRow, BuildRow, CommitRow, VectorRow

    def work(session) -> None:
        session.execute(delete(AerResultRow).where(AerResultRow.commit_id.in_(removed)))
        for model in (CommitRow, VectorRow, BaseRow, BuildRow):
            session.execute(delete(model).where(model.id.in_(removed)))

    repo.db.write(work)
