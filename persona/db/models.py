"""SQLAlchemy 2.0 models.

A naming convention on the metadata gives every constraint a stable name, which
Alembic's batch mode on SQLite needs to alter tables later.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class BaseRow(Base):
    """An imported base model (its name lives in refs/bases; this is the index)."""

    __tablename__ = "bases"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    architecture: Mapped[str] = mapped_column(String(200))
    parameters: Mapped[int] = mapped_column(Integer)
    tensors: Mapped[int] = mapped_column(Integer)
    source: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Float)


class VectorRow(Base):
    __tablename__ = "vectors"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    base_id: Mapped[str] = mapped_column(String(64), index=True)
    tensors: Mapped[int] = mapped_column(Integer)
    parameters: Mapped[int] = mapped_column(Integer)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Float)


class CommitRow(Base):
    __tablename__ = "commits"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    recipe_id: Mapped[str] = mapped_column(String(64), index=True)
    parents: Mapped[list[str]] = mapped_column(JSON)
    author: Mapped[str] = mapped_column(String(200))
    time: Mapped[int] = mapped_column(Integer, index=True)
    message: Mapped[str] = mapped_column(Text)


class BuildRow(Base):
    __tablename__ = "builds"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    recipe_id: Mapped[str] = mapped_column(String(64), index=True)
    base_id: Mapped[str] = mapped_column(String(64))
    weights_id: Mapped[str] = mapped_column(String(64))
    dtype: Mapped[str] = mapped_column(String(20))
    seconds: Mapped[float] = mapped_column(Float)
    created: Mapped[float] = mapped_column(Float)


class TrainingRunRow(Base):
    """What a training run did: the non-deterministic facts kept out of the vector object."""

    __tablename__ = "training_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vector_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    data_sha256: Mapped[str] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    losses: Mapped[list[float]] = mapped_column(JSON)
    wall_seconds: Mapped[float] = mapped_column(Float)
    versions: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Float)


class AerResultRow(Base):
    __tablename__ = "aer_results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    commit_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("commits.id"), index=True,
                                                  nullable=True)
    recipe_id: Mapped[str] = mapped_column(String(64), index=True)
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    probes_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None: tokens only / pre-0004
    prompt_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    probes_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    c_total: Mapped[int] = mapped_column(Integer)
    c_alignment_before: Mapped[int] = mapped_column(Integer)
    c_alignment_after: Mapped[int] = mapped_column(Integer)
    aer_before: Mapped[float] = mapped_column(Float)
    aer_after: Mapped[float] = mapped_column(Float)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Float)


class VerifiedBlobRow(Base):
    """A blob file that hashed to its id, and the file identity it had then (see store.verify_cache)."""

    __tablename__ = "verified_blobs"
    oid: Mapped[str] = mapped_column(String(64), primary_key=True)
    inode: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    ctime_ns: Mapped[int] = mapped_column(Integer)
    verified: Mapped[float] = mapped_column(Float)
