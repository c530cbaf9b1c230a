"""AER results keyed by (commit, prompt content, probe set): the probe file's digest and both files' names.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("aer_results") as batch:
        batch.add_column(sa.Column("probes_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("prompt_name", sa.String(255), nullable=True))
        batch.add_column(sa.Column("probes_name", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("aer_results") as batch:
        batch.drop_column("probes_name")
        batch.drop_column("prompt_name")
        batch.drop_column("probes_sha256")
