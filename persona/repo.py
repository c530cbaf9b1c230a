"""Repository: the object store, the refs and the database of one store directory.

Layout of a store (see store/README.md)::

    store/persona.json      marker + format version
    store/objects/ab/cd...  content-addressed objects
    store/HEAD, refs/, logs/  refs and reflogs
    store/persona.db        the SQLite index (unless PERSONA_DATABASE_URL)
    store/cache/            rebuildable caches (AER runs, training checkpoints)
"""

from __future__ import annotations

import contextlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from persona.errors import InvalidInput, NotFound, PersonaError, StoreError
from persona.fsutil import atomic_write_text, describe_os_error
from persona.store import objects as obj
from persona.store.object_store import DiskObjectStore, ObjectStore
from persona.store.refs import RefStore
from persona.store.verify_cache import VerifyCache

MARKER = "persona.json"
STORE_FORMAT = 1
DEFAULT_BRANCH = "main"
T = TypeVar("T")


def is_store(path: Path) -> bool:
    return (path / MARKER).is_file()


def discover(start: Path | None = None) -> Path:
    """Find the store: $PERSONA_STORE, else the nearest ``store/`` walking up."""
    env = os.environ.get("PERSONA_STORE")
    if env:
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if is_store(directory):
            return directory
        if is_store(directory / "store"):
            return directory / "store"
    raise NotFound("no persona store here or in any parent directory",
                   "run `persona init` to create ./store, or pass --store PATH")


class Repository:
    def __init__(self, root: Path, objects: ObjectStore | None = None) -> None:
        self.root = Path(root)
        self.objects: ObjectStore = objects or DiskObjectStore(
            self.root / "objects", VerifyCache(self._load_verified, self._save_verified))
        self.refs = RefStore(self.root)

    # -- lifecycle ---------------------------------------------------------------
    @classmethod
    def init(cls, root: Path) -> tuple[Repository, bool]:
        """Create a store at ``root``; returns (repo, created). Idempotent."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise InvalidInput(f"{root} exists and is not a directory", "choose another --store path")
        created = not is_store(root)
        try:
            for sub in ("objects", "refs/heads", "refs/tags", "refs/bases", "refs/vectors", "logs", "cache"):
                (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise describe_os_error(exc, root) from exc
        repo = cls(root)
        if created:
            if repo.refs.read_raw("HEAD") is None:
                repo.refs.update("HEAD", f"refs/heads/{DEFAULT_BRANCH}", expected=None, symbolic=True)
            atomic_write_text(root / MARKER, json.dumps({"format": STORE_FORMAT}) + "\n")
        repo.db  # noqa: B018 - create and migrate the database now
        return repo, created

    @classmethod
    def open(cls, root: Path | None = None) -> Repository:
        root = Path(root) if root is not None else discover()
        if not is_store(root):
            raise NotFound(f"{root} is not a persona store", "run `persona init` first, or pass --store PATH")
        try:
            marker = json.loads((root / MARKER).read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {root / MARKER}", "the store marker is damaged") from exc
        if marker.get("format") != STORE_FORMAT:
            raise StoreError(f"store format {marker.get('format')} is not supported",
                             "upgrade persona")
        return cls(root)

    @cached_property
    def db(self):  # -> Database; typed loosely to keep sqlalchemy out of import time
        from persona.db.migrate import upgrade
        from persona.db.session import Database, database_url, make_engine

        url, sqlite_file = database_url(self.root)
        engine = make_engine(url)
        upgrade(engine, sqlite_file)
        return Database(engine)

    # -- blobs known to be good (store.verify_cache) ----------------------------
    def _load_verified(self) -> dict[str, tuple[int, int, int, int]]:
        from sqlalchemy import select

        from persona.db.models import VerifiedBlobRow as Row

        def work(session) -> dict[str, tuple[int, int, int, int]]:
            rows = session.execute(select(Row.oid, Row.inode, Row.size, Row.mtime_ns, Row.ctime_ns))
            return {r.oid: (r.inode, r.size, r.mtime_ns, r.ctime_ns) for r in rows}

        return self.db.read(work)

    def _save_verified(self, records: dict[str, tuple[int, int, int, int]], when: float) -> None:
        from persona.db.models import VerifiedBlobRow as Row

        def work(session) -> None:
            for oid, (inode, size, mtime_ns, ctime_ns) in records.items():
                session.merge(Row(oid=oid, inode=inode, size=size, mtime_ns=mtime_ns, ctime_ns=ctime_ns,
                                  verified=when))

        self.db.write(work)

    def remember_verified(self) -> None:
        """Persist which blobs this command hashed or wrote (call after the command's work succeeded).

        Best effort: the records only save re-hashing later, so a store whose
        database cannot be written (a read-only copy being built from) loses
        them and the command still succeeds.
        """
        cache = getattr(self.objects, "verify_cache", None)
        if cache is None:
            return
        with contextlib.suppress(PersonaError, OSError):
            cache.flush()

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()

    # -- objects -----------------------------------------------------------------
    def put(self, item: Any) -> str:
        return self.objects.put(item.kind, item.to_payload())

    def get(self, oid: str, expected: type[T]) -> T:
        kind, payload = self.objects.get(oid)
        if kind != expected.kind:
            raise InvalidInput(f"object {oid[:12]} is a {kind}, not a {expected.kind}",
                               f"give the id of a {expected.kind}")
        return expected.from_payload(payload)

    def put_file(self, data: bytes) -> str:
        return self.objects.put("file", data)

    def get_file(self, oid: str) -> bytes:
        kind, payload = self.objects.get(oid)
        if kind != "file":
            raise InvalidInput(f"object {oid[:12]} is a {kind}, not a file", "check the id")
        return payload

    def commit(self, oid: str) -> obj.Commit:
        return self.get(oid, obj.Commit)

    def recipe(self, oid: str) -> obj.RecipeObject:
        return self.get(oid, obj.RecipeObject)

    # -- named things ------------------------------------------------------------
    def current_branch(self) -> str | None:
        target = self.refs.head_target()
        return target.removeprefix("refs/heads/") if target else None

    def head(self) -> str | None:
        return self.refs.resolve("HEAD")

    def base_id(self, name_or_id: str) -> str:
        from persona.store.revparse import resolve_named

        return resolve_named(self, "base", name_or_id)

    def vector_id(self, name_or_id: str) -> str:
        from persona.store.revparse import resolve_named

        return resolve_named(self, "vector", name_or_id)

    def cache_dir(self, name: str) -> Path:
        path = self.root / "cache" / name
        path.mkdir(parents=True, exist_ok=True)
        return path
