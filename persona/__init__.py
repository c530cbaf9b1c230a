"""persona: version control for an LLM's personality.

The package root imports nothing heavy: ``persona --help``, ``log``, ``diff`` and
``rollback`` must answer without loading torch or transformers.
"""

__version__ = "0.1.0"
