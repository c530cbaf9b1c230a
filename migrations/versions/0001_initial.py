"""Initial schema: bases, vectors, commits, builds.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bases",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("architecture", sa.String(200), nullable=False),
        sa.Column("parameters", sa.Integer, nullable=False),
        sa.Column("tensors", sa.Integer, nullable=False),
        sa.Column("source", sa.JSON, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bases"),
    )
    op.create_index("ix_bases_name", "bases", ["name"])
    op.create_table(
        "vectors",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("base_id", sa.String(64), nullable=False),
        sa.Column("tensors", sa.Integer, nullable=False),
        sa.Column("parameters", sa.Integer, nullable=False),
        sa.Column("provenance", sa.JSON, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_vectors"),
    )
    op.create_index("ix_vectors_name", "vectors", ["name"])
    op.create_index("ix_vectors_base_id", "vectors", ["base_id"])
    op.create_table(
        "commits",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("recipe_id", sa.String(64), nullable=False),
        sa.Column("parents", sa.JSON, nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("time", sa.Integer, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_commits"),
    )
    op.create_index("ix_commits_recipe_id", "commits", ["recipe_id"])
    op.create_index("ix_commits_time", "commits", ["time"])
    op.create_table(
        "builds",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("recipe_id", sa.String(64), nullable=False),
        sa.Column("base_id", sa.String(64), nullable=False),
        sa.Column("weights_id", sa.String(64), nullable=False),
        sa.Column("dtype", sa.String(20), nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_builds"),
    )
    op.create_index("ix_builds_recipe_id", "builds", ["recipe_id"])


def downgrade() -> None:
    for table in ("builds", "commits", "vectors", "bases"):
        op.drop_table(table)
