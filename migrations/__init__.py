"""Alembic scripts for persona's database (shipped in the wheel as persona._migrations)."""
