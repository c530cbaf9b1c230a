"""Alembic environment: always run programmatically by persona.db.migrate.

The caller hands over an open connection in ``config.attributes["connection"]``;
batch mode makes ALTER TABLE work on SQLite by copying the table.
"""

from alembic import context

from persona.db.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
