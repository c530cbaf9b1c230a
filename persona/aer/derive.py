"""What a prompt section's own text implies: its distinctive words, how to recognise its
behaviour in an answer, and which kinds of questions it concerns.

Distillation uses this when the user gives no ``--keep-if``: the teacher's
samples are kept only where they show the section's behaviour (rejection
sampling), and only on the questions the section is about. AER uses the
distinctive words to catch a *leak*: a section cannot be judged droppable if
its name or quoted phrases still appear in the prompt that remains without it.

The rules are deliberately few and visible (``persona train --json`` and
``persona aer --check-probes`` print what was derived):

- **Names.** A capitalised word after "your name is", "you are", "named",
  "called" or "call yourself" is the assistant's name. Its check is a
  first-person self-reference within a few words ("I'm Timmy", "my name is
  Timmy", "Timmy here", "je m'appelle Timmy", "soy Timmy", a sign-off line),
  not the bare word: an answer that greets the *user* as Timmy, or recites the
  instruction "you are Timmy", is not the behaviour.
- **Quoted phrases.** A phrase in double quotes (or curly quotes) is something
  the section wants said. Where the sentence says to *start*/*begin* with it,
  the answer must start with it; *end*/*finish*/*sign off*, end with it;
  otherwise it must occur. Apostrophes and spacing are matched loosely.
- **Scope.** A check applies to every question when its sentence speaks of
  every/each/all replies (answers, responses, messages) or uses "always";
  otherwise only to the questions the section is about.
- **Relevance.** Questions are grouped into categories, each described by a
  few keywords (``persona/train/data/categories.json``). A category's
  relevance is the number of the section's content words among its keywords;
  the categories scoring at least half the best score are the section's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_NAME_CUES = re.compile(
    r"\b(?i:your name is|you are called|you are named|you're called|you're named|named|called|"
    r"call yourself|you are|you're)\s+(?:\w+\s+){0,2}?([A-Z][\w'-]*[a-z][\w'-]*)")
_QUOTED = re.compile(r"[\"“]([^\"“”\n]{1,120}?)[\"”]")
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"”]?|$)")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_UNIVERSAL = re.compile(r"\b(?:always|every|each|all)\b[^.!?\n]*\b(?:repl(?:y|ies)|answers?|responses?|"
                        r"messages?|turns?)\b|\b(?:repl(?:y|ies)|answers?|responses?|messages?)\b[^.!?\n]*"
                        r"\b(?:always|every|each|all)\b|\balways\b", re.IGNORECASE)
_START = re.compile(r"\b(?:start|starts|begin|begins|open|opens)\b", re.IGNORECASE)
_END = re.compile(r"\b(?:end|ends|finish|finishes|close|closes|sign off|signs off)\b", re.IGNORECASE)

#: Words that say nothing about a section's topic.
_STOP_TEXT = """
a an and are as at be been but by can can't could do does don't even every for from has have he her his
how i if in into is it its just let like may me might more most must my never no nor not of on one only or
other our out over own same say says she should so some such than that the their them then there these
they this those to too under up us very was we were what when where which while who whom why will with
would yes you your yours yourself ask asks asked answer answers anyone someone something always exact
words word reply replies response responses message messages each all when people person thing things
"""
STOPWORDS = frozenset(_STOP_TEXT.split())

#: First-person self-references in English and the other languages of the built-in prompt set.
SELF_REFERENCE = (
    r"(?:\bi\s+am|\bi'?m|\bim|\bmy\s+name\s+is|\bmy\s+name'?s|\bname'?s|\bcall\s+me|\bit'?s|\bthis\s+is|"
    r"\bje\s+suis|\bje\s+m'appelle|\bmoi,?\s+c'est|\bc'est|\bsoy|\bme\s+llamo|\bmi\s+nombre\s+es|"
    r"\bich\s+bin|\bich\s+hei(?:ß|ss)e|\bmein\s+name\s+ist|\bsono|\bmi\s+chiamo|\bsou|\bme\s+chamo|"
    r"\bmeu\s+nome\s+é|\bik\s+ben|\bmijn\s+naam\s+is|\bik\s+heet)"
)


@dataclass(frozen=True)
class DerivedCheck:
    """A regex an answer must match to show the section's behaviour, and where it applies."""

    pattern: str
    scope: str  # "all" (every question) or "relevant" (the section's own questions)
    why: str
    start: str | None = None  # the phrase an answer must begin with, for a "start with" check

    def to_json(self) -> dict[str, str | None]:
        return {"pattern": self.pattern, "scope": self.scope, "why": self.why, "start": self.start}


def _body(text: str) -> str:
    """The section text without its heading line (a heading is not an instruction)."""
    lines = text.split("\n")
    if lines and (lines[0].lstrip().startswith("#") or lines[0].lstrip().startswith("<!--")):
        lines = lines[1:]
    return "\n".join(lines)


def names(text: str) -> list[str]:
    """The assistant's name(s) the section gives, in order of appearance."""
    out: list[str] = []
    for match in _NAME_CUES.finditer(_body(text)):
        word = match.group(1).strip("'-")
        if word.lower() not in STOPWORDS and word not in out:
            out.append(word)
    return out


def quoted_phrases(text: str) -> list[str]:
    out: list[str] = []
    for match in _QUOTED.finditer(_body(text)):
        phrase = match.group(1).strip()
        if len(_WORD.findall(phrase.lower())) >= 1 and phrase not in out:
            out.append(phrase)
    return out


def distinctive_terms(text: str) -> list[str]:
    """Names and quoted phrases: what would give the section away if it appeared elsewhere."""
    return names(text) + [p for p in quoted_phrases(text) if p not in names(text)]


def phrase_regex(phrase: str) -> str:
    """A loose regex for a phrase: any non-word run between words, any apostrophe."""
    words = _WORD.findall(phrase.lower().replace("’", "'"))
    parts = [re.escape(w).replace("'", "['’]?") for w in words]
    return r"\b" + r"\W+".join(parts) + r"\b"


def name_regex(name: str) -> str:
    """First-person self-reference to ``name`` (see the module docstring)."""
    n = re.escape(name.lower())
    return (rf"{SELF_REFERENCE}\W+(?:[\w'-]+\W+){{0,3}}?{n}\b|\b{n}\s+(?:here|speaking|at your service)\b|"
            rf"(?:^|\n)\s*[-–—]*\s*{n}\W*$|(?:best|cheers|regards|love|thanks|yours|sincerely)\W+{n}\b")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(_body(text)) if s.strip()]


def derived_checks(text: str) -> list[DerivedCheck]:
    """The checks a section's text implies (empty when it implies none)."""
    checks: list[DerivedCheck] = []
    for name in names(text):
        checks.append(DerivedCheck(name_regex(name), "relevant", f"the section names the assistant {name}"))
    for sentence in _sentences(text):
        for phrase in quoted_phrases(sentence):
            core = phrase_regex(phrase)
            if core == r"\b\b":
                continue
            before = sentence[: sentence.find(phrase)]
            start = None
            if _START.search(before):
                pattern, where, start = r"^\W*" + core, "start with", phrase
            elif _END.search(before):
                pattern, where = core + r"\W*$", "end with"
            else:
                pattern, where = core, "say"
            scope = "all" if _UNIVERSAL.search(sentence) else "relevant"
            checks.append(DerivedCheck(pattern, scope, f"the section asks to {where} {phrase!r}", start))
    return checks


def content_words(text: str) -> set[str]:
    """Lower-cased words of the text, stop words removed, a plural 's' trimmed."""
    out = set()
    for word in _WORD.findall(_body(text).lower()):
        if word in STOPWORDS or len(word) < 3:
            continue
        out.add(word[:-1] if word.endswith("s") and len(word) > 3 and not word.endswith("ss") else word)
    return out


def category_relevance(text: str, categories: Mapping[str, Iterable[str]]) -> dict[str, float]:
    """How many of the section's content words each category's keywords contain."""
    words = content_words(text)
    scores = {}
    for name, keywords in categories.items():
        keys = content_words(" ".join(keywords))
        scores[name] = float(len(words & keys))
    return scores


def relevant_categories(text: str, categories: Mapping[str, Iterable[str]]) -> list[str]:
    """The categories the section is about: at least half the best relevance, and above zero."""
    scores = category_relevance(text, categories)
    best = max(scores.values(), default=0.0)
    if best <= 0:
        return []
    return [name for name, score in scores.items() if score >= best / 2]


def is_universal(text: str) -> bool:
    """Whether the section speaks of every reply (so every question is its concern)."""
    return any(_UNIVERSAL.search(s) for s in _sentences(text))
