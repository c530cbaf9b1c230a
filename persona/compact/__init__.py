"""Deterministic, rule-based context compaction (``persona compact``, seed 004).

No model runs: six string rules shrink an OpenAI/Hermes message array so the
next request fits the context window, while user messages, the last N turns,
paths, URLs, tool names and error text survive. Library first; the CLI in
``persona.cli.compact_cmd`` is a thin layer over ``pipeline``.

Modules, one job each: ``config`` (YAML keys and checks), ``session`` (parse,
validate, serialise), ``turns`` (what a turn is, what rule 6 protects),
``refs`` (paths and URLs that must survive), ``outcome`` (did a tool call
fail), ``truncate`` (rule 2's algorithm), ``rules`` (rules 1-4), ``tokens``
(counting and the context window), ``engine`` (run the rules, account for
them), ``report`` (table and JSON), ``pipeline`` (trigger, files, directories).
"""

from persona.compact.config import CompactionConfig, config_from_mapping, load_config
from persona.compact.engine import compact, measure
from persona.compact.pipeline import (
    Result,
    check_bytes,
    compact_directory,
    compact_file,
    process_bytes,
)
from persona.compact.report import CompactionStats, FileReport, render_json, render_table
from persona.compact.session import Session, dump_session, parse_session, validate_messages
from persona.compact.tokens import ApproxCounter, TokenCounter, resolve_tokenizer

__all__ = [
    "ApproxCounter",
    "CompactionConfig",
    "CompactionStats",
    "FileReport",
    "Result",
    "Session",
    "TokenCounter",
    "check_bytes",
    "compact",
    "compact_directory",
    "compact_file",
    "config_from_mapping",
    "dump_session",
    "load_config",
    "measure",
    "parse_session",
    "process_bytes",
    "render_json",
    "render_table",
    "resolve_tokenizer",
    "validate_messages",
]
