"""Turns: what rule 3 ("after turn 1") and rule 6 ("the last N turns") count.

A turn is one exchange: the messages that prompt the model (system, user, tool
results) followed by the assistant messages that answer them. A new turn starts
at the first non-assistant message after an assistant message, so

    [system, user, assistant(calls), tool, assistant, user, assistant]
     |------- turn 1 -------------|  |- turn 2 -|  |-- turn 3 --|

System messages before the first user message belong to turn 1, as does that
user message. A trailing prompt with no answer yet is a turn of its own.

Why not "a turn starts at each user message": an agent session is often one user
request followed by dozens of tool round trips. Counting by user messages makes
the whole session one turn, so ``protect_last_n_turns: 5`` would protect
everything and compaction would never help where the seed needs it most ("a few
tool calls and the 65k window fills fast"). For a plain chat the two
definitions agree: each turn is one user message and its reply.

The protected tail (rule 6) starts at the first message of the N-th last turn.
If that message is a tool response, the tail is widened by one to include the
assistant message that made the call, so a call and its response are always on
the same side of the line: rule 1 never has to collapse half a pair.
"""

from __future__ import annotations

from typing import Any


def turn_numbers(messages: list[dict[str, Any]]) -> list[int]:
    """The 1-based turn of each message."""
    numbers = []
    turn = 1
    previous_assistant = False
    for message in messages:
        is_assistant = message.get("role") == "assistant"
        if previous_assistant and not is_assistant:
            turn += 1
        numbers.append(turn)
        previous_assistant = is_assistant
    return numbers


def protected_start(messages: list[dict[str, Any]], turns: list[int], protect_last_n: int) -> int:
    """Index of the first message rule 6 protects (``len(messages)`` when none is)."""
    if protect_last_n <= 0 or not messages:
        return len(messages)
    first_protected_turn = turns[-1] - protect_last_n + 1
    if first_protected_turn <= 1:
        return 0
    start = next(index for index, turn in enumerate(turns) if turn >= first_protected_turn)
    # A turn that starts with tool responses: its calls live in the message before.
    if messages[start].get("role") == "tool":
        start -= 1
    return start
