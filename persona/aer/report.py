"""Presenting AER results: text tables, JSON, a Prometheus textfile, a history plot.

The headline table follows the AER proposal (model / recipe, C_alignment,
C_total, AER, notes: one row for the base with the full prompt, one for the
recipe with its droppable sections removed). The modes table follows how a
memory benchmark reports its modes against a full-context ceiling: each way
of prompting with its pass rate and input tokens per probe, so the cost and
the quality of dropping sections sit side by side.

Nothing here prints: functions return strings or write files, and the CLI
decides where they go.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from persona.aer.evaluate import AerResult
from persona.aer.stats import wilson_interval
from persona.aer.tokens import TokenReport
from persona.errors import InvalidInput
from persona.fsutil import atomic_write_bytes

JSON_SCHEMA = "persona.aer/1"

Table = tuple[str, list[str], list[list[str]]]


# --------------------------------------------------------------------------- helpers


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def _aer(x: float) -> str:
    return f"{100 * x:.2f}%"


def _jsonable(value: Any) -> Any:
    """Dataclass-derived data with non-finite floats spelled as strings (JSON has no inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------- tables


def headline_table(result: AerResult) -> Table:
    """The AER table: the base with the full prompt vs the recipe with DROP sections removed."""
    delta = 100 * (result.aer_after - result.aer_before)
    kept = [s.name for s in result.sections if s.kind != "task" and not s.dropped]
    rows = [
        [
            f"{result.base_id} + {Path(result.prompt_source).name}",
            str(result.c_alignment_before),
            str(result.c_total),
            _aer(result.aer_before),
            "all alignment sections in the prompt",
        ],
        [
            result.recipe_id,
            str(result.c_alignment_after),
            str(result.c_total),
            _aer(result.aer_after),
            (f"drops {', '.join(result.dropped)}" if result.dropped else "nothing droppable")
            + (f"; keeps {', '.join(kept)}" if kept else "")
            + f"; {delta:+.2f} pp",
        ],
    ]
    return ("AER", ["model / recipe", "C_alignment", "C_total", "AER", "notes"], rows)


def _rate(passed: int | None, total: int) -> str:
    """``75% [47-91]``: a pass rate with its 95% Wilson interval."""
    if passed is None or total <= 0:
        return "-"
    low, high = wilson_interval(passed, total)
    return f"{100 * passed / total:.0f}% [{100 * low:.0f}-{100 * high:.0f}]"


def sections_table(result: AerResult) -> Table:
    rows = []
    for s in result.sections:
        counted = s.passed or {}
        rows.append(
            [
                s.name,
                s.kind + ("" if s.kind_source == "explicit" else f" ({s.kind_source})"),
                str(s.tokens),
                str(s.saving),
                f"{s.usable}/{s.probes}" if s.probes else "0",
                _rate(counted.get("ref"), s.usable) if counted else _pct(s.ref_pass),
                _rate(counted.get("base_without"), s.usable) if counted else _pct(s.base_without_pass),
                _rate(counted.get("recipe_without"), s.usable) if counted else _pct(s.recipe_without_pass),
                _rate(counted.get("recipe_full"), s.usable) if counted else _pct(s.recipe_full_pass),
                _num(s.kl_base_without),
                _num(s.kl_recipe_without),
                _num(s.kl_ratio, 2),
                s.verdict + (" (dropped)" if s.dropped else ""),
            ]
        )
    headers = ["section", "kind", "tokens", "saving", "probes", "ref", "base-S", "recipe-S", "recipe",
               "KL base-S", "KL recipe-S", "KL ratio", "verdict"]
    return (
        "Sections (pass rates with 95% Wilson intervals on the usable probes; ref = base + full prompt, "
        "-S = without the section; KL base-S = KL(base with S || base without S), KL recipe-S likewise for the recipe, "
        "both on the same passing answers)",
        headers,
        rows,
    )


def damage_table(result: AerResult) -> Table | None:
    d = result.damage
    if d is None:
        return None
    rows = [["base", _rate(d.base_passed, d.questions), "-", "-"],
            ["recipe", _rate(d.recipe_passed, d.questions), _num(d.neutral_kl),
             "DAMAGE" if d.damaged else "ok"]]
    return (f"General capability ({d.questions} general questions, no system prompt)",
            ["model", "pass rate", "KL from base (neutral)", "verdict"], rows)


def modes_table(result: AerResult) -> Table:
    rows = [
        [
            m.name,
            m.model,
            ", ".join(m.dropped) or "-",
            f"{_rate(m.passed, m.probes)} ({m.passed}/{m.probes})",
            f"{m.input_tokens:.0f}",
            str(m.system_tokens),
        ]
        for m in result.modes
    ]
    headers = ["mode", "model", "dropped", "pass rate", "avg input tokens/probe", "system tokens"]
    return ("Modes", headers, rows)


def tokens_table(report: TokenReport) -> Table:
    rows = [
        [
            s.name,
            s.kind + ("" if s.kind_source == "explicit" else f" ({s.kind_source})"),
            "yes" if s.is_alignment else "no",
            str(s.tokens),
            str(s.saving),
        ]
        for s in report.sections
    ]
    rows.append(["(template overhead)", "-", "no", str(report.overhead), "-"])
    rows.append(["total", "-", "-", str(report.total), "-"])
    return ("Tokens", ["section", "kind", "alignment", "tokens", "saving"], rows)


def _plain(table: Table) -> str:
    title, headers, rows = table
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [title, line(headers), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


def _rich(tables: Sequence[Table], width: int) -> str:
    from rich.console import Console
    from rich.table import Table as RichTable

    buf = io.StringIO()
    console = Console(
        file=buf, width=width, color_system=None, force_terminal=False, highlight=False
    )
    for title, headers, rows in tables:
        t = RichTable(title=title, title_justify="left")
        for h in headers:
            t.add_column(h, overflow="fold")
        for row in rows:
            t.add_row(*row)
        console.print(t)
    return buf.getvalue()


def render_tables(
    tables: Sequence[Table], *, use_rich: bool | None = None, width: int = 160
) -> str:
    """Tables as text: rich's box tables when rich is importable, else aligned columns."""
    if use_rich is None:
        try:
            import rich  # noqa: F401

            use_rich = True
        except ImportError:
            use_rich = False
    if use_rich:
        return _rich(tables, width)
    return "\n\n".join(_plain(t) for t in tables) + "\n"


def format_result(result: AerResult, *, use_rich: bool | None = None, width: int = 160) -> str:
    """The full text report: AER table, sections, each verdict's reason, modes, notes."""
    tables = [headline_table(result), sections_table(result)]
    damage = damage_table(result)
    if damage is not None:
        tables.append(damage)
    text = render_tables(tables, use_rich=use_rich, width=width)
    text += (
        "\n" + "\n".join(f"{s.name}: {s.verdict} - {s.reason}" for s in result.sections) + "\n\n"
    )
    text += render_tables([modes_table(result)], use_rich=use_rich, width=width)
    if result.notes:
        text += "\n" + "\n".join(f"note: {n}" for n in result.notes) + "\n"
    return text


def format_tokens(report: TokenReport, *, use_rich: bool | None = None, width: int = 160) -> str:
    """The ``--tokens-only`` report."""
    text = render_tables([tokens_table(report)], use_rich=use_rich, width=width)
    text += (
        f"\nC_alignment {report.c_alignment}  C_total {report.c_total}  AER {_aer(report.aer)}"
        f"  (no alignment prompt: {report.no_alignment_total} tokens; no prompt at all: {report.empty_total})\n"
    )
    if report.notes:
        text += "\n".join(f"note: {n}" for n in report.notes) + "\n"
    return text


# --------------------------------------------------------------------------- JSON


def tokens_to_json(report: TokenReport) -> dict[str, Any]:
    return _jsonable(
        {
            "c_total": report.c_total,
            "c_alignment": report.c_alignment,
            "aer": report.aer,
            "total": report.total,
            "overhead": report.overhead,
            "no_alignment_total": report.no_alignment_total,
            "empty_total": report.empty_total,
            "empty_system": report.empty_system,
            "default_system": asdict(report.default_system),
            "sections": [asdict(s) | {"alignment": s.is_alignment} for s in report.sections],
            "notes": list(report.notes),
        }
    )


def to_json(result: AerResult) -> dict[str, Any]:
    """A JSON-able dict of the whole result (``--json`` and the database row)."""
    return _jsonable(
        {
            "schema": JSON_SCHEMA,
            "base": result.base_id,
            "recipe": result.recipe_id,
            "prompt": result.prompt_source,
            "c_total": result.c_total,
            "c_alignment": {"before": result.c_alignment_before, "after": result.c_alignment_after},
            "aer": {
                "before": result.aer_before,
                "after": result.aer_after,
                "delta_pp": 100 * (result.aer_after - result.aer_before),
            },
            "dropped": list(result.dropped),
            "sections": [asdict(s) for s in result.sections],
            "drop_steps": [asdict(s) for s in result.drop_steps],
            "modes": [asdict(m) | {"pass_rate": m.pass_rate,
                                   "wilson95": list(wilson_interval(m.passed, m.probes)) if m.probes else None}
                      for m in result.modes],
            "damage": asdict(result.damage) if result.damage is not None else None,
            "lint": result.lint,
            "tokens": tokens_to_json(result.tokens),
            "config": asdict(result.config),
            "notes": list(result.notes),
            "cache": {"hits": result.cache_hits, "misses": result.cache_misses},
            "runs": {mode: [asdict(r) for r in runs] for mode, runs in result.runs.items()},
        }
    )


# --------------------------------------------------------------------------- Prometheus


def prom_text(result: AerResult | TokenReport, recipe_label: str) -> bytes:
    """Prometheus text exposition of the AER metrics.

    ``persona_aer{recipe, stage}`` (stage ``before`` and, for a full run,
    ``after``), ``persona_section_tokens{recipe, section}`` and, for a full
    run, ``persona_section_droppable{recipe, section}`` (1 when the section is
    in the final drop set).
    """
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    g_aer = Gauge(
        "persona_aer",
        "Alignment Efficiency Ratio: 1 - C_alignment / C_total",
        ["recipe", "stage"],
        registry=registry,
    )
    g_tokens = Gauge(
        "persona_section_tokens",
        "Tokens of a system-prompt section in the rendered chat",
        ["recipe", "section"],
        registry=registry,
    )
    if isinstance(result, TokenReport):
        g_aer.labels(recipe_label, "before").set(result.aer)
        for s in result.sections:
            g_tokens.labels(recipe_label, s.name).set(s.tokens)
    else:
        g_drop = Gauge(
            "persona_section_droppable",
            "1 when the recipe's weights replace this prompt section (verdict DROP, re-checked)",
            ["recipe", "section"],
            registry=registry,
        )
        g_aer.labels(recipe_label, "before").set(result.aer_before)
        g_aer.labels(recipe_label, "after").set(result.aer_after)
        for s in result.sections:
            g_tokens.labels(recipe_label, s.name).set(s.tokens)
            g_drop.labels(recipe_label, s.name).set(1 if s.dropped else 0)
    return generate_latest(registry)


def write_prom(path: Path | str, result: AerResult | TokenReport, recipe_label: str) -> None:
    """Write the Prometheus textfile atomically (node_exporter never reads half a file)."""
    atomic_write_bytes(Path(path), prom_text(result, recipe_label))


# --------------------------------------------------------------------------- history


@dataclass(frozen=True)
class HistoryPoint:
    """AER of one commit measured with one prompt and one probe set, for ``persona aer --history``."""

    label: str
    aer_before: float
    aer_after: float | None = None
    commit: str | None = None
    message: str | None = None
    prompt_name: str | None = None
    prompt_sha256: str | None = None
    probes_name: str | None = None
    probes_sha256: str | None = None
    dropped: list[str] | None = None

    @property
    def measured_with(self) -> str:
        """``SOUL.md@1a2b3c4d probes.yaml@5e6f7a8b``: which prompt and probe set the AER comes from."""
        def name(n: str | None, sha: str | None) -> str:
            if sha is None:
                return "-"
            return f"{n or '?'}@{sha[:8]}"

        return f"{name(self.prompt_name, self.prompt_sha256)} {name(self.probes_name, self.probes_sha256)}"


def history_point(label: str, data: dict[str, Any]) -> HistoryPoint:
    """A history point from a stored :func:`to_json` (or :func:`tokens_to_json`) payload."""
    aer_data = data.get("aer")
    if isinstance(aer_data, dict):
        before, after = aer_data.get("before"), aer_data.get("after")
    else:  # a --tokens-only payload: one AER, nothing dropped yet
        before, after = aer_data, None
    if not isinstance(before, (int, float)):
        raise InvalidInput(
            f"stored AER result for {label} has no AER value", "re-run `persona aer` on it"
        )
    return HistoryPoint(
        label, float(before), float(after) if isinstance(after, (int, float)) else None
    )


def format_history(points: Sequence[HistoryPoint], *, use_rich: bool | None = None) -> str:
    rows = [
        [p.label, p.measured_with, _aer(p.aer_before), "-" if p.aer_after is None else _aer(p.aer_after),
         ", ".join(p.dropped or []) or "-"]
        for p in points
    ]
    return render_tables(
        [("AER history", ["commit", "prompt and probes", "AER before", "AER after", "dropped"], rows)],
        use_rich=use_rich,
    )


def plot_history(points: Sequence[HistoryPoint], path: Path | str) -> None:
    """A PNG of AER (before and after dropping sections) per commit, oldest first."""
    if not points:
        raise InvalidInput("no AER results to plot", "run `persona aer` on some commits first")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidInput(
            "plotting needs matplotlib, which is not installed", "pip install matplotlib"
        ) from None
    xs = list(range(len(points)))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(points)), 4.0))
    try:
        ax.plot(
            xs, [100 * p.aer_before for p in points], marker="o", label="AER before (full prompt)"
        )
        after = [
            (x, 100 * p.aer_after)
            for x, p in zip(xs, points, strict=True)
            if p.aer_after is not None
        ]
        if after:
            ax.plot(
                [a[0] for a in after],
                [a[1] for a in after],
                marker="s",
                label="AER after (DROP sections removed)",
            )
        ax.set_xticks(xs)
        ax.set_xticklabels([p.label for p in points], rotation=45, ha="right")
        ax.set_ylabel("AER (%)")
        ax.set_title("Alignment Efficiency Ratio per commit")
        ax.legend()
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
