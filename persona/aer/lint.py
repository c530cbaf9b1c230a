"""What can be said about a probe file before any model runs: leaks, overlaps, too few probes.

``persona aer --check-probes`` prints this in seconds; ``persona aer`` runs the
same checks and lets them decide the verdict (see ``persona.aer.evaluate``):

- **Leak.** When section S is dropped, the prompt that remains must not give S
  away. If a ``must_match`` pattern of S's probes, or one of S's distinctive
  words (a name, a quoted phrase: ``persona.aer.derive``), occurs in the
  remaining prompt, a model can pass S's probes by copying it from there, and
  S's verdict is LEAK, never DROP. Seen in practice: a preamble comment saying
  "the system prompt for the Timmy demo" let the recipe pass "Timmy" probes
  without the identity section, and without that word it passed none.
- **Overlap.** A probe whose user turns nearly duplicate a prompt one of the
  recipe's vectors was trained on is left out of the verdict
  (``persona.aer.overlap`` documents the measure).
- **Too few.** A section with fewer than :data:`MIN_PROBES` usable probes (after
  overlaps are left out) gets no DROP: 4 of 4 is consistent with a true pass
  rate of 51% (Wilson 95% interval).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import regex

from persona.aer import derive
from persona.aer.overlap import OverlapFinding, TrainingPrompts, find_overlaps
from persona.aer.probes import Probe, probes_by_section
from persona.aer.sections import PromptDoc

#: Fewest usable probes a section needs for a DROP.
MIN_PROBES = 8
REGEX_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class LeakFinding:
    """Something that gives section ``section`` away, found in the prompt that remains without it."""

    section: str
    term: str
    source: str  # "name or quoted phrase" | "probe <id> must_match"
    found_in: str  # the section of the remaining prompt it occurs in
    line: int
    excerpt: str

    def to_json(self) -> dict[str, Any]:
        return {"section": self.section, "term": self.term, "source": self.source, "found_in": self.found_in,
                "line": self.line, "excerpt": self.excerpt}

    def describe(self) -> str:
        return f"{self.term!r} ({self.source}) occurs in {self.found_in} at line {self.line}: {self.excerpt!r}"


@dataclass
class SectionLint:
    name: str
    kind: str
    probes: int = 0
    leaks: list[LeakFinding] = field(default_factory=list)
    overlaps: list[OverlapFinding] = field(default_factory=list)

    @property
    def usable(self) -> int:
        return self.probes - len(self.overlaps)

    @property
    def too_few(self) -> bool:
        return self.usable < MIN_PROBES

    def to_json(self) -> dict[str, Any]:
        return {"section": self.name, "kind": self.kind, "probes": self.probes, "usable_probes": self.usable,
                "too_few": self.too_few, "min_probes": MIN_PROBES,
                "leaks": [f.to_json() for f in self.leaks], "overlaps": [f.to_json() for f in self.overlaps]}


@dataclass
class ProbeLint:
    sections: dict[str, SectionLint]
    training_prompts: int  # how many training prompts the overlap check compared against
    notes: list[str] = field(default_factory=list)

    @property
    def overlapping_ids(self) -> set[str]:
        return {f.probe_id for s in self.sections.values() for f in s.overlaps}

    def to_json(self) -> dict[str, Any]:
        return {"sections": {n: s.to_json() for n, s in self.sections.items()},
                "leaks": [f.to_json() for s in self.sections.values() for f in s.leaks],
                "overlaps": [f.to_json() for s in self.sections.values() for f in s.overlaps],
                "training_prompts_compared": self.training_prompts, "min_probes": MIN_PROBES,
                "notes": list(self.notes)}


def _excerpt(text: str, start: int, end: int) -> str:
    left = text.rfind("\n", 0, start) + 1
    right = text.find("\n", end)
    line = text[left: right if right >= 0 else len(text)].strip()
    return line if len(line) <= 100 else line[:97] + "..."


def find_leaks(doc: PromptDoc, section: str, probes: Sequence[Probe]) -> list[LeakFinding]:
    """Where the prompt without ``section`` still gives it away (see the module docstring)."""
    target = doc.section(section)
    searches: list[tuple[str, str, str]] = []  # (label, regex, source)
    for term in derive.distinctive_terms(target.text):
        searches.append((term, derive.phrase_regex(term), "name or quoted phrase of the section"))
    for probe in probes:
        for pattern in probe.checks.must_match:
            searches.append((pattern, pattern, f"probe {probe.id} must_match"))
    findings: list[LeakFinding] = []
    seen: set[tuple[str, str]] = set()
    for other in doc.sections:
        if other.name == target.name:
            continue
        for label, pattern, source in searches:
            try:
                match = regex.search(pattern, other.text, regex.IGNORECASE, timeout=REGEX_TIMEOUT_S)
            except TimeoutError:
                match = None
            if match is None or (label, other.name) in seen:
                continue
            seen.add((label, other.name))
            line = other.line + other.text.count("\n", 0, match.start())
            findings.append(LeakFinding(target.name, label, source, other.name, line,
                                        _excerpt(other.text, match.start(), match.end())))
    return findings


def lint_probes(doc: PromptDoc, probes: Sequence[Probe], training: TrainingPrompts | None = None) -> ProbeLint:
    """Leaks, overlaps and probe counts for every alignment section of ``doc``."""
    by_section = probes_by_section(probes)
    overlaps = find_overlaps(probes, training) if training is not None else {}
    sections: dict[str, SectionLint] = {}
    for s in doc.sections:
        if not s.is_alignment:
            continue
        group = by_section.get(s.name, [])
        lint = SectionLint(s.name, s.kind, len(group))
        lint.leaks = find_leaks(doc, s.name, group)
        lint.overlaps = [overlaps[p.id] for p in group if p.id in overlaps]
        sections[s.name] = lint
    notes = []
    if training is None:
        notes.append("no recipe to compare against: overlap with training prompts not checked")
    elif not len(training):
        notes.append("the recipe's vectors carry no training prompts (imported adapters, or trained before "
                     "persona kept them): overlap not checked")
    return ProbeLint(sections, len(training) if training is not None else 0, notes)
