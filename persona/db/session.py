"""Engines and sessions.

SQLite by default (``store/persona.db``, WAL so readers never block the writer,
a busy timeout so concurrent writers wait instead of failing); any SQLAlchemy URL
through ``PERSONA_DATABASE_URL`` (e.g. PostgreSQL for a team).
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from persona import faults
from persona.errors import StoreError

T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000
RETRIES = 8


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA foreign_keys=ON")
            except sqlite3.OperationalError as exc:
                # Opening a WAL database writes its -shm file: a full disk or a
                # read-only store fails here, before any transaction can retry.
                raise _open_error(exc, url) from exc
            finally:
                cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def _open_error(exc: Exception, url: str) -> StoreError:
    """Name the likely cause of a database that cannot be opened."""
    path = Path(url.split("///", 1)[-1]) if "///" in url else None
    folder = path.parent if path is not None else None
    reason = str(exc)
    if folder is not None and folder.is_dir():
        with contextlib.suppress(OSError):
            if os.statvfs(folder).f_bavail == 0:
                return StoreError(f"disk full: cannot open the database {path} ({reason})",
                                  "free some space and run the command again")
        if not os.access(folder, os.W_OK):
            return StoreError(f"permission denied: cannot open the database {path} ({reason})",
                              "check the store's permissions (or use --store)")
    return StoreError(f"cannot open the database {path or url}: {reason}",
                      "check the disk (full? read-only?) and the store's permissions")


def database_url(store_root: Path) -> tuple[str, Path | None]:
    """The URL to use and, for SQLite in the store, the file (for backups)."""
    url = os.environ.get("PERSONA_DATABASE_URL")
    if url:
        return url, None
    path = store_root / "persona.db"
    return f"sqlite:///{path}", path


class Database:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a transaction, retrying a bounded number of times when locked."""
        for attempt in range(RETRIES):
            try:
                with self.session() as session:
                    result = work(session)
                    faults.checkpoint("db.commit")
                    return result
            except IntegrityError as exc:
                # Two processes indexing the same object (e.g. the same build) raced
                # between merge()'s SELECT and INSERT: the row exists now, so running
                # the (idempotent) work again updates it instead.
                if attempt == RETRIES - 1:
                    raise StoreError(f"database conflict: {exc.orig}", "run the command again") from exc
                time.sleep(0.01 * (0.5 + random.random()))
            except OperationalError as exc:
                if "locked" not in str(exc).lower() and "busy" not in str(exc).lower():
                    raise StoreError(f"database error: {exc.orig}", "run `persona fsck`") from exc
                if attempt == RETRIES - 1:
                    raise StoreError("the database stayed locked by other persona processes",
                                     "retry when the other commands have finished") from exc
                time.sleep(0.05 * (2 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def read(self, work: Callable[[Session], T]) -> T:
        return self.write(work)

    def dispose(self) -> None:
        self.engine.dispose()
