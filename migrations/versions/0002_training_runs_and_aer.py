"""Training runs and AER results.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("vector_id", sa.String(64), nullable=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("data_sha256", sa.String(64), nullable=False),
        sa.Column("hyperparameters", sa.JSON, nullable=False),
        sa.Column("losses", sa.JSON, nullable=False),
        sa.Column("wall_seconds", sa.Float, nullable=False),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_training_runs"),
    )
    op.create_index("ix_training_runs_vector_id", "training_runs", ["vector_id"])
    op.create_table(
        "aer_results",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("commit_id", sa.String(64), nullable=True),
        sa.Column("recipe_id", sa.String(64), nullable=False),
        sa.Column("prompt_sha256", sa.String(64), nullable=False),
        sa.Column("c_total", sa.Integer, nullable=False),
        sa.Column("c_alignment_before", sa.Integer, nullable=False),
        sa.Column("c_alignment_after", sa.Integer, nullable=False),
        sa.Column("aer_before", sa.Float, nullable=False),
        sa.Column("aer_after", sa.Float, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_aer_results"),
        sa.ForeignKeyConstraint(["commit_id"], ["commits.id"], name="fk_aer_results_commit_id_commits"),
    )
    op.create_index("ix_aer_results_commit_id", "aer_results", ["commit_id"])
    op.create_index("ix_aer_results_recipe_id", "aer_results", ["recipe_id"])


def downgrade() -> None:
    op.drop_table("aer_results")
    op.drop_table("training_runs")
