"""The questions a distillation shows its teacher: the built-in set, the user's, which of them
a section concerns, and the split into training and held-out parts.

Why a built-in set. Distilled on 40 identity questions, a vector named its
assistant on 1 of 12 *new* identity questions: it had learned those 40
prompts, not the behaviour. The built-in set (``persona/train/data/prompts.jsonl``,
391 user turns written for persona, see its README) covers direct and
indirect questions about the assistant, presuppositions ("You're Siri,
right?"), six languages, requests for secrets, everyday tasks, facts, writing
jobs and multi-turn snippets.

Selection (:func:`select`). The section's text decides which categories it
concerns (:mod:`persona.aer.derive`): those prompts are *targeted* (the
teacher's answers there are checked and resampled, see ``persona.train.teacher``).
A section that speaks of every reply targets every prompt. The user's own
``--prompts`` are always targeted. A sample of the other prompts, half as many
as the targeted ones by default, are *anchors*: there the section does not
matter, the teacher answers as the base would, and distilling those answers
ties the student to the base's distribution, which is what keeps collateral
damage down.

Split (:func:`split`). A prompt is held out when the sha256 of its normalised
user turns falls below the held-out fraction: a pure function of the text, so
the same prompt is on the same side in every run, whatever else is in the
pool. Held-out prompts are never trained on; they pick the checkpoint and
give the pass rate and KL reported at the end of training.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from persona.aer import derive
from persona.errors import InvalidInput, NotFound

Message = dict[str, str]

#: Anchors per targeted prompt, by default.
ANCHOR_RATIO = 0.5
#: Share of prompts held out, by default.
HELDOUT_FRACTION = 0.2
#: At most this many targeted prompts by default (the built-in set has more for
#: a section about every reply; more prompts cost teacher time, not quality).
MAX_TARGETED = 96


@dataclass(frozen=True)
class PoolPrompt:
    """One question (or a short chat ending in a user turn) the teacher may answer."""

    id: str
    category: str
    messages: tuple[Message, ...]
    source: str = "builtin"
    lang: str = "en"

    @property
    def user_text(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def key(self) -> str:
        return normalise(self.user_text)


@dataclass
class Selection:
    """The prompts one distillation uses, and why."""

    targeted: list[PoolPrompt]
    anchors: list[PoolPrompt]
    categories: list[str]
    universal: bool
    skipped_duplicates: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def all(self) -> list[PoolPrompt]:
        return self.targeted + self.anchors


def normalise(text: str) -> str:
    """Case-folded, accents kept, punctuation and spacing collapsed: how prompts are compared."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("’", "'")
    return " ".join(re.findall(r"[\w']+", text))


def _data(name: str) -> str:
    return resources.files("persona.train").joinpath("data", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def builtin_prompts() -> tuple[PoolPrompt, ...]:
    out = []
    for line in _data("prompts.jsonl").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(PoolPrompt(row["id"], row["category"], tuple(row["messages"]), "builtin", row["lang"]))
    return tuple(out)


@lru_cache(maxsize=1)
def builtin_categories() -> dict[str, list[str]]:
    return json.loads(_data("categories.json"))


def builtin_sha256() -> str:
    """Digest of the built-in set as shipped (provenance: a new set gives new vectors)."""
    return hashlib.sha256((_data("prompts.jsonl") + _data("categories.json")).encode()).hexdigest()


def load_user_prompts(path: Path | str) -> tuple[list[PoolPrompt], str]:
    """``--prompts``: one question per line, or JSONL chats (``{"messages": [...]}`` ending in a user turn)."""
    from persona.train.data import _read_text

    path = Path(path)
    if not path.exists():
        raise NotFound(f"prompts file not found: {path}", "check the --prompts path")
    text, raw = _read_text(path, "prompts file")
    prompts: list[PoolPrompt] = []
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        where = f"{path}:{number}"
        if stripped.startswith("{"):
            prompts.append(PoolPrompt(where, "user", _jsonl_turns(stripped, where), str(path)))
        else:
            prompts.append(PoolPrompt(where, "user", ({"role": "user", "content": stripped},), str(path)))
    if not prompts:
        raise InvalidInput(f"{path}: no prompts (the file is empty)", "write one question per line")
    return prompts, hashlib.sha256(raw).hexdigest()


def _jsonl_turns(line: str, where: str) -> tuple[Message, ...]:
    hint = 'a JSON line is {"messages": [{"role": "user", "content": "..."}, ...]} ending in a user turn'
    try:
        item = json.loads(line)
    except ValueError as exc:
        raise InvalidInput(f"{where}: not valid JSON: {exc}", hint) from None
    except RecursionError:
        raise InvalidInput(f"{where}: JSON nested too deeply", hint) from None
    turns = item.get("messages") if isinstance(item, dict) else None
    if not isinstance(turns, list) or not turns:
        raise InvalidInput(f"{where}: expected an object with a non-empty 'messages' array", hint)
    out = []
    for i, m in enumerate(turns):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant") \
                or not isinstance(m.get("content"), str) or not m["content"].strip():
            raise InvalidInput(f"{where}: message {i} must be a user or assistant turn with text", hint)
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise InvalidInput(f"{where}: the last turn must be a user turn", hint)
    return tuple(out)


def _hash_unit(text: str, salt: str = "") -> float:
    digest = hashlib.sha256(f"{salt}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def select(section_text: str, builtin: Sequence[PoolPrompt], user: Sequence[PoolPrompt] = (),
           anchor_ratio: float = ANCHOR_RATIO, max_targeted: int | None = MAX_TARGETED,
           categories: dict[str, list[str]] | None = None) -> Selection:
    """Targeted prompts and anchors for a section (see the module docstring)."""
    if anchor_ratio < 0:
        raise InvalidInput(f"--anchor-ratio must not be negative, got {anchor_ratio}", "e.g. --anchor-ratio 0.5")
    categories = builtin_categories() if categories is None else categories
    universal = derive.is_universal(section_text)
    relevant = list(categories) if universal else derive.relevant_categories(section_text, categories)
    seen: set[str] = set()
    duplicates = 0

    def unique(prompts: Iterable[PoolPrompt]) -> list[PoolPrompt]:
        nonlocal duplicates
        out = []
        for p in prompts:
            if p.key in seen:
                duplicates += 1
                continue
            seen.add(p.key)
            out.append(p)
        return out

    user_prompts = unique(user)
    targeted_builtin = [p for p in builtin if p.category in relevant]
    targeted_builtin.sort(key=lambda p: _hash_unit(p.key, "order"))
    targeted_builtin = unique(targeted_builtin)
    if max_targeted is not None:
        targeted_builtin = targeted_builtin[:max(0, max_targeted - len(user_prompts))]
    targeted = user_prompts + targeted_builtin
    notes = []
    if not relevant:
        notes.append("the section's words match none of the built-in categories: only --prompts are targeted")
    anchors: list[PoolPrompt] = []
    if not universal:
        others = [p for p in builtin if p.category not in relevant]
        others.sort(key=lambda p: _hash_unit(p.key, "anchor"))
        anchors = unique(others)[: round(anchor_ratio * len(targeted))]
    return Selection(targeted, anchors, relevant, universal, duplicates, notes)


def split(prompts: Sequence[PoolPrompt], fraction: float = HELDOUT_FRACTION) -> tuple[list[PoolPrompt],
                                                                                      list[PoolPrompt]]:
    """(train, held-out): held out when the prompt's hash falls below ``fraction``.

    With at least two prompts, each side gets at least one: a tiny pool would
    otherwise leave nothing to train on or nothing to check.
    """
    if not 0.0 <= fraction < 1.0:
        raise InvalidInput(f"--held-out must be in [0, 1), got {fraction}", "e.g. --held-out 0.2")
    scored = sorted(prompts, key=lambda p: _hash_unit(p.key, "heldout"))
    held = [p for p in scored if _hash_unit(p.key, "heldout") < fraction]
    train = [p for p in scored if _hash_unit(p.key, "heldout") >= fraction]
    if fraction > 0 and len(prompts) >= 2:
        if not held:
            held, train = train[:1], train[1:]
        elif not train:
            train, held = held[-1:], held[:-1]
    order = {p.key: i for i, p in enumerate(prompts)}
    return sorted(train, key=lambda p: order[p.key]), sorted(held, key=lambda p: order[p.key])


def to_json(prompts: Sequence[PoolPrompt]) -> list[dict[str, Any]]:
    return [{"id": p.id, "category": p.category, "messages": list(p.messages)} for p in prompts]
