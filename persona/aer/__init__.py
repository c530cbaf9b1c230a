"""AER: how much of a system prompt a merged model lets you drop.

AER = 1 - C_alignment / C_total, where C_alignment counts the tokens of the
identity, values, behaviour, tools and memory sections of the system prompt
as the model's chat template renders them, and C_total is the context window.

Modules, from the bottom up:

* :mod:`~persona.aer.sections`: prompt file -> named, kinded sections.
* :mod:`~persona.aer.probes`: YAML probes, validation, regex checks.
* :mod:`~persona.aer.tokens`: token attribution and marginal savings.
* :mod:`~persona.aer.runner`: the model interface; transformers and fake runners.
* :mod:`~persona.aer.evaluate`: the 2x2 grid, KL, verdicts, greedy drop, modes.
* :mod:`~persona.aer.report`: tables, JSON, Prometheus, history plot.

This package never imports torch at import time, and names are loaded on first
use so that importing it (for history tables, say) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Section": "sections",
    "PromptDoc": "sections",
    "parse_prompt": "sections",
    "load_prompt": "sections",
    "render_without": "sections",
    "ALIGNMENT_KINDS": "sections",
    "Probe": "probes",
    "Checks": "probes",
    "load_probes": "probes",
    "parse_probes": "probes",
    "run_checks": "probes",
    "aer": "tokens",
    "attribute_tokens": "tokens",
    "marginal_savings": "tokens",
    "detect_default_system": "tokens",
    "token_report": "tokens",
    "resolve_context_window": "tokens",
    "TokenReport": "tokens",
    "ModelRunner": "runner",
    "TransformersRunner": "runner",
    "FakeRunner": "runner",
    "AerConfig": "evaluate",
    "AerResult": "evaluate",
    "RunCache": "evaluate",
    "evaluate_aer": "evaluate",
    "decide": "evaluate",
    "mean_kl": "evaluate",
    "to_json": "report",
    "tokens_to_json": "report",
    "format_result": "report",
    "format_tokens": "report",
    "format_history": "report",
    "write_prom": "report",
    "plot_history": "report",
    "HistoryPoint": "report",
    "history_point": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
