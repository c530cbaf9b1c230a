"""Migrations: a database made at the first revision upgrades on open, with a backup."""

from __future__ import annotations

import sqlite3

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from persona.db.migrate import HEAD_REVISION, current_revision, migrations_dir
from persona.db.session import make_engine
from persona.porcelain import history
from persona.repo import Repository


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def test_head_constant_matches_scripts():
    assert ScriptDirectory.from_config(_config()).get_current_head() == HEAD_REVISION


def test_models_match_the_migrated_schema(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from persona.db.models import Base

    repo, _ = Repository.init(tmp_path / "store")
    with repo.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_from_first_revision_keeps_data_and_backs_up(tmp_path):
    store = tmp_path / "store"
    repo, _ = Repository.init(store)
    repo.close()
    db_file = store / "persona.db"
    db_file.unlink()
    # Recreate the database as revision 0001 made it, with a row in it.
    engine = make_engine(f"sqlite:///{db_file}")
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    engine.dispose()
    with sqlite3.connect(db_file) as conn:
        conn.execute("INSERT INTO commits (id, recipe_id, parents, author, time, message) "
                     "VALUES ('c1', 'r1', '[]', 'old', 1, 'from the past')")
    engine = make_engine(f"sqlite:///{db_file}")
    assert current_revision(engine) == "0001"
    assert not inspect(engine).has_table("aer_results")
    engine.dispose()

    reopened = Repository.open(store)
    reopened.db  # noqa: B018 - opening migrates
    assert current_revision(reopened.db.engine) == HEAD_REVISION
    assert inspect(reopened.db.engine).has_table("aer_results")
    assert (store / "persona.db.bak-0001").is_file()
    with sqlite3.connect(store / "persona.db.bak-0001") as conn:
        assert conn.execute("SELECT message FROM commits").fetchone() == ("from the past",)
    with reopened.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT message FROM commits").scalar() == "from the past"
    assert history.log(reopened) == []  # refs are the truth: the index row alone makes no history


def test_database_url_env_is_honoured(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("PERSONA_DATABASE_URL", url)
    repo, _ = Repository.init(tmp_path / "store")
    assert (tmp_path / "elsewhere.db").is_file()
    assert not (tmp_path / "store" / "persona.db").exists()
    repo.close()


def test_racing_index_writes_of_the_same_row_are_retried(tmp_path):
    """Two processes indexing the same build: the loser's INSERT conflicts and is retried as an update."""
    from persona.db.models import BuildRow

    repo, _ = Repository.init(tmp_path / "store")
    calls = []

    def work(session):
        calls.append(1)
        if len(calls) == 1:
            # Simulate the other process winning the race after our SELECT.
            with repo.db.engine.begin() as other:
                other.exec_driver_sql("INSERT INTO builds (id, recipe_id, base_id, weights_id, dtype, seconds, "
                                      "created) VALUES ('b1', 'r', 'b', 'w', 'F32', 0, 0)")
            session.add(BuildRow(id="b1", recipe_id="r", base_id="b", weights_id="w", dtype="F32", seconds=1.0,
                                 created=1.0))
        else:
            session.merge(BuildRow(id="b1", recipe_id="r", base_id="b", weights_id="w", dtype="F32", seconds=1.0,
                                   created=1.0))

    repo.db.write(work)
    assert len(calls) == 2
    with repo.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT seconds FROM builds WHERE id = 'b1'").scalar() == 1.0
