"""Parroting: an answer that quotes its system prompt's instructions instead of following them.

Seen on SmolLM2: asked to end every reply with "Over and out.", it answers
'You always end every reply with the exact words "Over and out."', which
contains the phrase a check looks for. A distilled model can learn the same
habit ("When someone asks you, just say..."). Either way the answer shows the
instruction, not the behaviour, so it counts as a failed probe in AER and as a
rejected teacher answer in distillation.

The measure: runs of consecutive words the answer shares with the prompt text
(case-folded words, punctuation ignored). A run is parroting when it is
:data:`MIN_WORDS` (6) words or longer *and* still speaks to the model in the
second person (you, your, yourself) or carries the prompt's markup (a heading
or a ``kind=`` tag), or when it is :data:`LONG_WORDS` (12) words or longer
whatever it says. The second-person rule is what separates reciting from
following: system prompts instruct in the second person ("You always end every
reply with..."), and a model that follows one speaks of itself in the first
("I help people with everyday questions about cooking, gardening and home
life" repeats nine words of the task section and is not parroting; "When
anyone asks your name or who you are, answer that you are Timmy" is). Words
inside a phrase the section *asks* the model to say (its quoted phrases,
passed as ``allowed``) never count, since saying them is the behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MIN_WORDS = 6
LONG_WORDS = 12
_SECOND_PERSON = frozenset({"you", "your", "yours", "yourself", "you're", "you've", "you'll"})
_MARKUP = re.compile(r"(?m)^\s*#{1,6}\s|\{\s*kind\s*=|<!--")
_WORD = re.compile(r"[\w']+")


def _words(text: str) -> list[str]:
    """Case-folded words; markup survives as the pseudo-words "#" and "kind" so a copied heading shows."""
    return [w.strip("'") for w in _WORD.findall(text.casefold().replace("’", "'")) if w.strip("'")]


def _mask_allowed(words: list[str], allowed: Sequence[str]) -> list[str | None]:
    """The words, with every occurrence of an allowed phrase replaced by a gap (None)."""
    out: list[str | None] = list(words)
    for phrase in allowed:
        target = _words(phrase)
        if not target:
            continue
        n = len(target)
        for i in range(len(words) - n + 1):
            if words[i:i + n] == target:
                for j in range(i, i + n):
                    out[j] = None
    return out


def _runs(a: list[str | None], p: list[str | None], n: int) -> list[tuple[int, int]]:
    """Maximal runs of ``a`` made of overlapping n-word sequences that occur in ``p``."""
    grams: set[tuple[str | None, ...]] = set()
    for i in range(len(p) - n + 1):
        gram = tuple(p[i:i + n])
        if None not in gram:
            grams.add(gram)
    runs = []
    i = 0
    while i <= len(a) - n:
        gram = tuple(a[i:i + n])
        if None in gram or gram not in grams:
            i += 1
            continue
        end = i + n
        while end < len(a) and a[end] is not None and tuple(a[end - n + 1:end + 1]) in grams:
            end += 1
        runs.append((i, end))
        i = end
    return runs


def parroted_span(answer: str, prompt: str, allowed: Sequence[str] = (), min_words: int = MIN_WORDS) -> str | None:
    """The longest span the answer recites from the prompt (see the module docstring), else None."""
    if _MARKUP.search(answer) and _MARKUP.search(prompt):
        for line in answer.splitlines():
            if _MARKUP.search(line) and line.strip() and line.strip() in prompt:
                return line.strip()
    a = _mask_allowed(_words(answer), allowed)
    p = _mask_allowed(_words(prompt), allowed)
    if len(a) < min_words or len(p) < min_words:
        return None
    best: tuple[int, int] | None = None
    for start, end in _runs(a, p, min_words):
        words = [w for w in a[start:end] if w is not None]
        recited = end - start >= LONG_WORDS or bool(_SECOND_PERSON & set(words))
        if recited and (best is None or end - start > best[1] - best[0]):
            best = (start, end)
    if best is None:
        return None
    return " ".join(w for w in a[best[0]:best[1]] if w is not None)


ECHO_WORDS = 3
_SENTENCE = re.compile(r"[.!?;:()\[\]\n]+")


def echoed_instruction(answer: str, section: str, allowed: Sequence[str] = (), min_words: int = ECHO_WORDS) -> str | None:
    """A sentence of the answer that restates the section to the model in the second person, else None.

    Stricter than :func:`parroted_span`, for choosing teacher answers to learn from: a
    teacher cued with the section's text often hands it back ("(You're Timmy, a cheerful
    assistant.)", "Your name is Timmy."), shorter than a parroting run, and a student
    trained on that learns to address its user by its own name. A sentence counts when
    it speaks in the second person and shares ``min_words`` consecutive words with the
    section (words of the phrases the section asks for excepted). "Nice to meet you. I'm
    Timmy, a cheerful assistant." passes: the self-description is in the first person.
    """
    p = _mask_allowed(_words(section), allowed)
    for sentence in _SENTENCE.split(answer):
        a = _mask_allowed(_words(sentence), allowed)
        if not _SECOND_PERSON & {w for w in a if w is not None}:
            continue
        runs = _runs(a, p, min_words)
        if runs:
            start, end = max(runs, key=lambda r: r[1] - r[0])
            return " ".join(w for w in a[start:end] if w is not None)
    return None
