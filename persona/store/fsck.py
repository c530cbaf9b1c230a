"""Check the store: every object re-hashed, every ref and pointer followed.

Problems are collected, never raised, so one run names every damaged object.
The database is checked against the objects (the objects are the truth).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from persona.errors import CorruptObject, NotFound, PersonaError
from persona.store import objects as obj

if TYPE_CHECKING:
    from persona.repo import Repository

REF_KINDS = {"refs/heads/": "commit", "refs/tags/": "commit", "refs/bases/": "base",
             "refs/vectors/": "vector", "HEAD": "commit"}


@dataclass
class Problem:
    what: str  # corrupt | missing | bad-ref | dangling | db-orphan
    id: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"what": self.what, "id": self.id, "message": self.message}


@dataclass
class FsckReport:
    objects: int = 0
    bytes: int = 0
    refs: int = 0
    db_rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "objects": self.objects, "bytes": self.bytes, "refs": self.refs,
                "db_rows": self.db_rows, "problems": [p.to_json() for p in self.problems],
                "repaired": self.repaired}


def _expected_kind(ref: str) -> str | None:
    for prefix, kind in REF_KINDS.items():
        if ref.startswith(prefix):
            return kind
    return None


def fsck(repo: Repository, progress: Callable[[int, int], None] | None = None,
         check_db: bool = True) -> FsckReport:
    report = FsckReport()
    ids = list(repo.objects.iter_ids())
    good: dict[str, str] = {}
    for index, oid in enumerate(ids):
        try:
            repo.objects.verify(oid)
            good[oid] = repo.objects.kind_of(oid)
            report.bytes += repo.objects.size(oid)
        except PersonaError as exc:
            report.problems.append(Problem("corrupt", oid, exc.message))
        report.objects += 1
        if progress:
            progress(index + 1, len(ids))

    def point(source: str, target: str, kind: str | None = None) -> None:
        if target not in good:
            if any(p.id == target for p in report.problems):
                return
            report.problems.append(Problem("missing", target, f"{source} points to missing object {target[:12]}"))
        elif kind and good[target] != kind:
            report.problems.append(Problem("dangling", target,
                                           f"{source} points to a {good[target]}, expected a {kind}"))

    for oid, kind in good.items():
        if kind in ("blob", "file"):
            continue
        try:
            _, payload = repo.objects.get(oid)
            for target in obj.referenced_ids(kind, payload):
                point(f"{kind} {oid[:12]}", target)
        except PersonaError as exc:
            report.problems.append(Problem("corrupt", oid, exc.message))

    for ref, value in repo.refs.all_refs():
        report.refs += 1
        if value.startswith("ref: "):
            continue
        point(f"ref {ref}", value, _expected_kind(ref))
    for ref in repo.refs.reflog_refs():
        for entry in repo.refs.reflog(ref):
            for value in (entry.old, entry.new):
                if value and value not in good and not any(p.id == value for p in report.problems):
                    report.problems.append(Problem("missing", value,
                                                   f"reflog of {ref} points to missing object {value[:12]}"))
    if check_db:
        _check_db(repo, good, report)
    return report


def _check_db(repo: Repository, good: dict[str, str], report: FsckReport) -> None:
    from sqlalchemy import select

    from persona.db.models import BaseRow, BuildRow, CommitRow, VectorRow

    def work(session) -> list[tuple[str, str, str]]:
        rows = []
        for model, kind in ((CommitRow, "commit"), (VectorRow, "vector"), (BaseRow, "base"),
                            (BuildRow, "build")):
            rows += [(model.__tablename__, kind, oid) for oid in session.execute(select(model.id)).scalars()]
        return rows

    for table, kind, oid in repo.db.read(work):
        report.db_rows += 1
        if good.get(oid) != kind:
            report.problems.append(Problem("db-orphan", oid,
                                           f"database table {table} lists {oid[:12]}, which is not a {kind} "
                                           "in the object store"))


def repair_index(repo: Repository) -> dict[str, int]:
    """Rebuild the database index from the object store and refs."""
    from sqlalchemy import delete, select

    from persona.db.models import AerResultRow, BaseRow, BuildRow, CommitRow, VectorRow
    from persona.porcelain.index import base_row, build_row, vector_row

    names = {"base": {v: k for k, v in repo.refs.list("base").items()},
             "vector": {v: k for k, v in repo.refs.list("vector").items()}}
    rows: list[Any] = []
    counts = {"commits": 0, "vectors": 0, "bases": 0, "builds": 0}
    for oid in repo.objects.iter_ids():
        try:
            kind = repo.objects.kind_of(oid)
            if kind == "commit":
                c = repo.commit(oid)
                rows.append(CommitRow(id=oid, recipe_id=c.recipe, parents=list(c.parents), author=c.author,
                                      time=c.time, message=c.message))
                counts["commits"] += 1
            elif kind == "vector":
                rows.append(vector_row(repo, oid, names["vector"].get(oid, oid[:12])))
                counts["vectors"] += 1
            elif kind == "base":
                rows.append(base_row(repo, oid, names["base"].get(oid, oid[:12])))
                counts["bases"] += 1
            elif kind == "build":
                rows.append(build_row(repo, oid))
                counts["builds"] += 1
        except (CorruptObject, NotFound):
            continue

    def work(session) -> None:
        for model in (CommitRow, VectorRow, BaseRow, BuildRow):
            existing = set(session.execute(select(model.id)).scalars())
            wanted = {r.id for r in rows if isinstance(r, model)}
            stale = existing - wanted
            if stale:
                if model is CommitRow:
                    session.execute(delete(AerResultRow).where(AerResultRow.commit_id.in_(stale)))
                session.execute(delete(model).where(model.id.in_(stale)))
        for row in rows:
            session.merge(row)

    repo.db.write(work)
    return counts
