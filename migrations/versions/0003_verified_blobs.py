"""Blobs whose hash was checked, by file identity (persona.store.verify_cache).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "verified_blobs",
        sa.Column("oid", sa.String(64), nullable=False),
        sa.Column("inode", sa.Integer, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("mtime_ns", sa.Integer, nullable=False),
        sa.Column("ctime_ns", sa.Integer, nullable=False),
        sa.Column("verified", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("oid", name="pk_verified_blobs"),
    )


def downgrade() -> None:
    op.drop_table("verified_blobs")
