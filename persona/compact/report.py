"""What compaction did, as data, as a table and as JSON.

``CompactionStats`` is the engine's account: messages and tokens before and
after per role, and per rule what it rewrote, removed and saved (rules run in
order, so a rule's saving is measured on the output of the rules before it).
``FileReport`` adds the trigger decision for one input: the tokenizer, the
context window, the share of it used before and after, and the share freed.

Numbers in JSON are rounded to 4 decimals so reports are stable byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ROLE_ORDER = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class RoleStats:
    """Messages and tokens of one role, before and after."""

    role: str
    messages_before: int = 0
    messages_after: int = 0
    tokens_before: int = 0
    tokens_after: int = 0


@dataclass(frozen=True)
class RuleStats:
    """What one rule did: messages rewritten, messages removed, tokens saved."""

    number: int
    name: str
    enabled: bool
    messages_changed: int = 0
    messages_removed: int = 0
    tokens_saved: int = 0


@dataclass(frozen=True)
class CompactionStats:
    """The engine's account of one compaction (or of a measurement, if nothing ran)."""

    roles: tuple[RoleStats, ...]
    rules: tuple[RuleStats, ...]
    protected_messages: int = 0
    protect_last_n_turns: int = 0

    @property
    def messages_before(self) -> int:
        return sum(role.messages_before for role in self.roles)

    @property
    def messages_after(self) -> int:
        return sum(role.messages_after for role in self.roles)

    @property
    def tokens_before(self) -> int:
        return sum(role.tokens_before for role in self.roles)

    @property
    def tokens_after(self) -> int:
        return sum(role.tokens_after for role in self.roles)

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": {"before": self.messages_before, "after": self.messages_after},
            "tokens": {"before": self.tokens_before, "after": self.tokens_after},
            "protected_messages": self.protected_messages,
            "protect_last_n_turns": self.protect_last_n_turns,
            "roles": {
                role.role: {
                    "messages_before": role.messages_before,
                    "messages_after": role.messages_after,
                    "tokens_before": role.tokens_before,
                    "tokens_after": role.tokens_after,
                }
                for role in self.roles
            },
            "rules": [
                {
                    "rule": rule.number,
                    "name": rule.name,
                    "enabled": rule.enabled,
                    "messages_changed": rule.messages_changed,
                    "messages_removed": rule.messages_removed,
                    "tokens_saved": rule.tokens_saved,
                }
                for rule in self.rules
            ],
        }


def _ratio(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass(frozen=True)
class FileReport:
    """One input's trigger decision and compaction account."""

    source: str
    output: str | None
    tokenizer: str
    approx: bool
    context_window: int | None
    trigger_threshold: float
    enabled: bool
    forced: bool
    triggered: bool | None
    compacted: bool
    reason: str
    stats: CompactionStats = field(repr=False)
    check_only: bool = False

    def usage(self, tokens: int) -> float | None:
        return tokens / self.context_window if self.context_window else None

    @property
    def usage_before(self) -> float | None:
        return self.usage(self.stats.tokens_before)

    @property
    def usage_after(self) -> float | None:
        return self.usage(self.stats.tokens_after)

    @property
    def window_freed(self) -> float | None:
        return self.usage(self.stats.tokens_before - self.stats.tokens_after)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "output": self.output,
            "tokenizer": self.tokenizer,
            "approx": self.approx,
            "context_window": self.context_window,
            "trigger_threshold": self.trigger_threshold,
            "enabled": self.enabled,
            "forced": self.forced,
            "triggered": self.triggered,
            "compacted": self.compacted,
            "check_only": self.check_only,
            "reason": self.reason,
            "usage": {"before": _ratio(self.usage_before), "after": _ratio(self.usage_after)},
            "window_freed": _ratio(self.window_freed),
        }
        out.update(self.stats.to_dict())
        return out


def total_stats(stats: Sequence[CompactionStats]) -> CompactionStats:
    """Sum several accounts (a directory of sessions) role by role and rule by rule."""
    roles: dict[str, list[int]] = {}
    rules: dict[tuple[int, str], list[Any]] = {}
    protected = 0
    for item in stats:
        protected += item.protected_messages
        for role in item.roles:
            acc = roles.setdefault(role.role, [0, 0, 0, 0])
            acc[0] += role.messages_before
            acc[1] += role.messages_after
            acc[2] += role.tokens_before
            acc[3] += role.tokens_after
        for rule in item.rules:
            acc_rule = rules.setdefault((rule.number, rule.name), [False, 0, 0, 0])
            acc_rule[0] = acc_rule[0] or rule.enabled
            acc_rule[1] += rule.messages_changed
            acc_rule[2] += rule.messages_removed
            acc_rule[3] += rule.tokens_saved
    ordered = sorted(roles, key=lambda r: (ROLE_ORDER.index(r) if r in ROLE_ORDER else 99, r))
    return CompactionStats(
        roles=tuple(RoleStats(role, *roles[role]) for role in ordered),
        rules=tuple(
            RuleStats(number, name, *rules[(number, name)]) for number, name in sorted(rules)
        ),
        protected_messages=protected,
        protect_last_n_turns=stats[0].protect_last_n_turns if stats else 0,
    )


def render_json(reports: Sequence[FileReport], *, directory: bool = False) -> str:
    """One file's report as a JSON object, or ``{"files": [...], "total": {...}}``."""
    if not directory and len(reports) == 1:
        obj: Any = reports[0].to_dict()
    else:
        obj = {
            "files": [report.to_dict() for report in reports],
            "total": total_stats([report.stats for report in reports]).to_dict(),
        }
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _summary_line(report: FileReport) -> str:
    stats = report.stats
    unit = "tokens (approx)" if report.approx else f"tokens ({report.tokenizer})"
    if report.check_only:
        line = f"{unit}: {stats.tokens_before:,}; messages: {stats.messages_before:,}"
        if report.context_window:
            line += f"; window {report.context_window:,}: {_pct(report.usage_before)} used"
        return line
    line = (
        f"{unit}: {stats.tokens_before:,} -> {stats.tokens_after:,}; "
        f"messages: {stats.messages_before:,} -> {stats.messages_after:,}"
    )
    if report.context_window:
        line += (
            f"; window {report.context_window:,}: {_pct(report.usage_before)} -> "
            f"{_pct(report.usage_after)} used, {_pct(report.window_freed)} freed"
        )
    return line


def _stats_tables(stats: CompactionStats, *, rules: bool = True) -> list[str]:
    lines = [f"{'role':<12}{'messages':>18}{'tokens':>24}"]
    for role in stats.roles:
        if rules:
            messages = f"{role.messages_before:,} -> {role.messages_after:,}"
            tokens = f"{role.tokens_before:,} -> {role.tokens_after:,}"
        else:  # a measurement: there is no "after"
            messages, tokens = f"{role.messages_before:,}", f"{role.tokens_before:,}"
        lines.append(f"{role.role:<12}{messages:>18}{tokens:>24}")
    if not rules:
        return lines
    lines.append("")
    lines.append(f"{'rule':<30}{'changed':>9}{'removed':>9}{'tokens saved':>14}")
    for rule in stats.rules:
        label = f"{rule.number} {rule.name}"
        if not rule.enabled:
            lines.append(f"{label:<30}{'(off)':>9}")
            continue
        lines.append(
            f"{label:<30}{rule.messages_changed:>9,}{rule.messages_removed:>9,}{rule.tokens_saved:>14,}"
        )
    user = next((role for role in stats.roles if role.role == "user"), None)
    lines.append(
        f"5 user messages untouched: {user.messages_before if user else 0:,}; "
        f"6 protected (last {stats.protect_last_n_turns} turns): {stats.protected_messages:,} messages"
    )
    return lines


def render_table(reports: Sequence[FileReport], *, directory: bool = False) -> str:
    """A human-readable report: per file a summary, then role and rule tables."""
    lines: list[str] = []
    for report in reports:
        target = f" -> {report.output}" if report.output else ""
        if report.check_only:
            state = "over the threshold" if report.triggered else "under the threshold"
        else:
            state = "compacted" if report.compacted else "unchanged"
        lines.append(f"{report.source}{target}: {state} ({report.reason})")
        lines.append("  " + _summary_line(report))
    if not reports:
        lines.append("no session files found")
        return "\n".join(lines) + "\n"
    stats = (
        reports[0].stats
        if len(reports) == 1 and not directory
        else total_stats([report.stats for report in reports])
    )
    measured_only = all(report.check_only for report in reports)
    if (len(reports) > 1 or directory) and measured_only:
        lines.append(f"total: tokens {stats.tokens_before:,}; messages {stats.messages_before:,}")
    elif len(reports) > 1 or directory:
        lines.append(
            f"total: tokens {stats.tokens_before:,} -> {stats.tokens_after:,}; "
            f"messages {stats.messages_before:,} -> {stats.messages_after:,}"
        )
    lines.append("")
    lines.extend(_stats_tables(stats, rules=not measured_only))
    return "\n".join(lines) + "\n"
