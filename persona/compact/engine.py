"""Run the rules over a session and account for what they did.

``compact(session, config)`` always applies the enabled rules (the trigger
decision lives in ``pipeline.py``): turns and the protected tail are computed
once on the input, then rules 1-4 run in the seed's order, each on the output
of the one before, and the tokens of every message are counted as they change
so each rule's saving is exact for the counter in use.

A session that did not come from ``parse_session`` is validated first: the
rules rely on every tool call being paired with its response. When no rule
changes anything, the very same ``Session`` object is returned, so callers can
keep the input's bytes.

Determinism: rules depend only on the messages and the config (no clocks, no
sets iterated into the output, no tokenizer-dependent decisions), so the same
input and config give the same messages, and ``dump_session`` the same bytes.
Idempotence: every rule leaves output that it, and the rules after it, leave
alone on a second pass (see each rule's markers), so ``compact(compact(s)) ==
compact(s)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from persona.compact.config import CompactionConfig
from persona.compact.report import ROLE_ORDER, CompactionStats, RoleStats, RuleStats
from persona.compact.rules import (
    RuleOutcome,
    Slot,
    collapse_assistant_runs,
    collapse_tool_pairs,
    drop_late_system,
    truncate_tool_outputs,
)
from persona.compact.session import Session, validate_messages
from persona.compact.tokens import ApproxCounter, TokenCounter, message_tokens
from persona.compact.turns import protected_start, turn_numbers

Rule = Callable[[list[Slot], CompactionConfig], RuleOutcome]

RULES: tuple[tuple[int, str, Rule, Callable[[CompactionConfig], bool]], ...] = (
    (1, "collapse_tool_pairs", collapse_tool_pairs, lambda c: c.keep_tool_summary),
    (
        2,
        "truncate_tool_output",
        truncate_tool_outputs,
        lambda c: c.max_tool_output_chars is not None,
    ),
    (3, "drop_late_system", drop_late_system, lambda c: c.drop_system_after_turn is not None),
    (
        4,
        "collapse_assistant_runs",
        collapse_assistant_runs,
        lambda c: c.collapse_consecutive_assistant,
    ),
)


def _count(slots: list[Slot], counter: TokenCounter) -> list[Slot]:
    """Fill in the token count of every slot whose message is new."""
    todo = [index for index, slot in enumerate(slots) if slot.tokens is None]
    if not todo:
        return slots
    counts = message_tokens([slots[index].message for index in todo], counter)
    out = list(slots)
    for index, count in zip(todo, counts, strict=True):
        out[index] = Slot(slots[index].message, slots[index].protected, slots[index].turn, count)
    return out


def _total(slots: Sequence[Slot]) -> int:
    return sum(slot.tokens or 0 for slot in slots)


def _roles(before: Sequence[Slot], after: Sequence[Slot]) -> tuple[RoleStats, ...]:
    tallies: dict[str, list[int]] = {role: [0, 0, 0, 0] for role in ROLE_ORDER}
    for slot in before:
        tallies[slot.role][0] += 1
        tallies[slot.role][2] += slot.tokens or 0
    for slot in after:
        tallies[slot.role][1] += 1
        tallies[slot.role][3] += slot.tokens or 0
    return tuple(RoleStats(role, *tallies[role]) for role in ROLE_ORDER)


def _initial_slots(session: Session, config: CompactionConfig, counter: TokenCounter) -> list[Slot]:
    messages = session.messages
    turns = turn_numbers(messages)
    start = protected_start(messages, turns, config.protect_last_n_turns)
    slots = [Slot(message, index >= start, turns[index]) for index, message in enumerate(messages)]
    return _count(slots, counter)


def measure(
    session: Session, config: CompactionConfig, counter: TokenCounter | None = None
) -> CompactionStats:
    """Count messages and tokens without compacting (for --check and skipped runs)."""
    if not session.validated:
        validate_messages(session.messages)
    slots = _initial_slots(session, config, counter or ApproxCounter())
    rules = tuple(RuleStats(number, name, enabled(config)) for number, name, _, enabled in RULES)
    return CompactionStats(
        roles=_roles(slots, slots),
        rules=rules,
        protected_messages=sum(slot.protected for slot in slots),
        protect_last_n_turns=config.protect_last_n_turns,
    )


def compact(
    session: Session, config: CompactionConfig, counter: TokenCounter | None = None
) -> tuple[Session, CompactionStats]:
    """Apply rules 1-4 (honouring 5 and 6) and return the new session and its account."""
    counter = counter or ApproxCounter()
    if not session.validated:
        validate_messages(session.messages)
    before = _initial_slots(session, config, counter)
    slots = before
    rule_stats = []
    for number, name, rule, enabled in RULES:
        if not enabled(config):
            rule_stats.append(RuleStats(number, name, False))
            continue
        outcome = rule(slots, config)
        new_slots = _count(outcome.slots, counter)
        rule_stats.append(
            RuleStats(
                number,
                name,
                True,
                messages_changed=outcome.changed,
                messages_removed=outcome.removed,
                tokens_saved=_total(slots) - _total(new_slots),
            )
        )
        slots = new_slots
    stats = CompactionStats(
        roles=_roles(before, slots),
        rules=tuple(rule_stats),
        protected_messages=sum(slot.protected for slot in before),
        protect_last_n_turns=config.protect_last_n_turns,
    )
    changed = len(slots) != len(before) or any(
        new.message is not old.message for new, old in zip(slots, before, strict=False)
    )
    if not changed:
        return session, stats
    # The rules keep every call paired with its response: the output is valid.
    return session.with_messages([slot.message for slot in slots], validated=True), stats
