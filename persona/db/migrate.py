"""Open the database and bring its schema up to date.

Migrations run on open, so an upgraded persona never meets an old schema. The
common case (already at head) is checked with one query and never imports
Alembic, which keeps history commands fast. Before upgrading a SQLite file we
copy it aside (``persona.db.bak-<old revision>``); a file lock serialises
concurrent first opens.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, inspect, text

from persona.errors import StoreError

HEAD_REVISION = "0004"


def migrations_dir() -> Path:
    import persona._migrations as package

    return Path(package.__file__).parent


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextlib.contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine, sqlite_file: Path | None, target: str = "head") -> str | None:
    """Upgrade to ``target``; returns the backup path's name when one was made."""
    if target == "head" and current_revision(engine) == HEAD_REVISION:
        return None
    from alembic import command
    from alembic.config import Config

    lock = sqlite_file.with_name(sqlite_file.name + ".migrate.lock") if sqlite_file else None
    with _file_lock(lock):
        before = current_revision(engine)
        if target == "head" and before == HEAD_REVISION:
            return None
        backup = None
        if sqlite_file is not None and before is not None and sqlite_file.exists():
            backup = sqlite_file.with_name(f"{sqlite_file.name}.bak-{before}")
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(FULL)")
            shutil.copy2(sqlite_file, backup)
        config = Config()
        config.set_main_option("script_location", str(migrations_dir()))
        try:
            with engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, target)
        except Exception as exc:
            raise StoreError(f"database migration failed: {exc}",
                             f"the previous database was saved as {backup}" if backup else
                             "check PERSONA_DATABASE_URL") from exc
        return backup.name if backup else None
