"""Degenerate repetition: an answer that loops instead of answering.

Small models fall into loops ("Howdy! Howdy! Howdy!", "I'm a chatbot. I'm a
chatbot. I'm a chatbot."), and a loop can satisfy a check: asked to start every
reply with "Howdy!", SmolLM2-135M's passing samples were mostly the word
repeated to the end of the token budget. A student distilled from such answers
learns the loop. So a repeating answer is rejected as a teacher answer and
fails a probe, like a parroting one.

The rules, on the answer's case-folded words:

- one word three or more times in a row ("howdy howdy howdy");
- any three-word sequence occurring three or more times;
- at least 12 words of which fewer than a third are distinct.

An ordinary answer does not hit these (a recipe, a refusal, a short introduction);
a loop hits the second rule by its third repetition.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[\w']+")


def repetition(answer: str) -> str | None:
    """What repeats, when the answer loops (see the module docstring); else None."""
    words = [w.strip("'") for w in _WORD.findall(answer.casefold()) if w.strip("'")]
    for i in range(len(words) - 2):
        if words[i] == words[i + 1] == words[i + 2]:
            return f"{words[i]!r} three times in a row"
    grams = Counter(tuple(words[i:i + 3]) for i in range(len(words) - 2))
    if grams:
        gram, count = grams.most_common(1)[0]
        if count >= 3:
            return f"{' '.join(gram)!r} {count} times"
    if len(words) >= 12 and len(set(words)) < len(words) / 3:
        return f"{len(set(words))} distinct words in {len(words)}"
    return None
