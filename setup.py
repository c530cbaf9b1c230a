"""Package discovery that pyproject.toml alone cannot express.

The Alembic scripts live in the top-level ``migrations/`` folder (the layout the
design asks for) and ship inside the wheel as ``persona._migrations``, so an
installed CLI can upgrade its own database without the source tree.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["persona", "persona.*"]),
              "persona._migrations", "persona._migrations.versions"],
    package_dir={"persona._migrations": "migrations"},
    package_data={"persona._migrations": ["*.mako", "*.ini"],
                  "persona.train": ["data/*.jsonl", "data/*.json", "data/*.md"],
                  "persona.aer": ["data/*.yaml", "data/*.md"]},
)
