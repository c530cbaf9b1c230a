"""The teacher's answers for a distillation: greedy first, then rejection sampling.

The teacher is the base model with the whole prompt as its system prompt. A
small teacher follows its prompt only sometimes (SmolLM2-135M named itself in
5 of 64 sampled answers to identity questions), and distilling its misses
would teach them too, so on the *targeted* prompts (the questions the section
is about, see ``persona.train.prompt_pool``) every answer is judged:

1. the greedy answer is kept if it passes;
2. otherwise up to ``rounds`` rounds of ``samples`` answers each are drawn
   (temperature sampling among the top 50 tokens, seeded per round), and the
   first that passes is kept;
3. a prompt with no passing answer is left out (and counted).

An answer *passes* when it matches the section's checks (``--keep-if``, or the
checks derived from the section's text, see ``persona.aer.derive``), does not
*parrot* the prompt (recite its instructions, see ``persona.aer.parroting``: a
small model asked to end with "Over and out." mostly recites the instruction,
and a recital matches the check) and does not *loop* (``persona.aer.repetition``:
asked to start with "Howdy!", it mostly repeats the word to the end of its
budget). Anchor answers are judged by the last two only.

Begun answers. A check that an answer must *start* with a phrase ("You always
start every reply with the word 'Howdy!'") is met by beginning the teacher's
answer with that phrase and letting it continue. That is rejection sampling
done exactly rather than by trial: the continuation is drawn from the
teacher's own distribution given that the answer starts as the section says,
which is the distribution rejection sampling would keep, without the hundreds
of draws a small teacher needs to start that way by chance. The begun tokens
are taught as certain (the conditioned teacher puts all its mass on them); the
rest is the teacher's own distribution.

The cue. On targeted prompts the section's own text is repeated in brackets
after the user's question ("(Your name is Timmy. ...)"). SmolLM2-135M attends to
an instruction beside the question far more than to one in a system prompt:
with the cue it named itself in 49 of 64 sampled answers, without it 5 (see
the README's distillation evidence). The student never sees the cue, the
section or the question's bracket: it learns to answer the plain question as
the cued teacher does. Anchor prompts (where the section does not matter) are
answered without the cue, so they carry the base's ordinary behaviour.

Answers are cached per rendered prompt, decoding settings and seed under
``repo.cache_dir("distill")/answers``, so re-running a distillation
generates nothing it has generated before.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import regex

from persona import canonical
from persona.aer.parroting import echoed_instruction, parroted_span
from persona.aer.repetition import repetition
from persona.aer.tokens import build_messages, render_chat
from persona.fsutil import atomic_write_bytes
from persona.repo import Repository
from persona.train.prompt_pool import PoolPrompt

Progress = Callable[[str, int, int], None]

#: Sampling temperature for rejection sampling.
TEMPERATURE = 0.8
REGEX_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class Check:
    pattern: str
    scope: str  # "all" | "relevant"
    why: str
    start: str | None = None  # a "start with" check's phrase: the teacher's answer is begun with it


@dataclass
class Judge:
    """Decides whether a teacher (or student) answer shows the section's behaviour."""

    checks: list[Check]
    prompt_text: str  # the whole prompt file: what counts as parroting
    allowed_phrases: list[str] = field(default_factory=list)  # quoted phrases the section asks for
    section_text: str = ""  # the section itself: what an answer must not hand back to the user

    def applicable(self, relevant: bool) -> list[Check]:
        return [c for c in self.checks if c.scope == "all" or relevant]

    def answer_start(self, relevant: bool) -> str | None:
        """The phrase a targeted answer must begin with, if an applicable check says so."""
        return next((c.start for c in self.applicable(relevant) if c.start), None)

    def verdict(self, answer: str, relevant: bool) -> str | None:
        """None when the answer passes, else why not ("parrot", "echo", "repeat", or the failed check)."""
        if parroted_span(answer, self.prompt_text, self.allowed_phrases) is not None:
            return "parrot"
        if self.section_text and echoed_instruction(answer, self.section_text, self.allowed_phrases) is not None:
            return "echo"
        if repetition(answer) is not None:
            return "repeat"
        start = self.answer_start(relevant)
        if start is not None and _words_after(answer, start) < MIN_WORDS_AFTER_START:
            # "Howdy!" and nothing else passes a start-with check and teaches the student to stop there
            return "empty"
        for check in self.applicable(relevant):
            try:
                hit = regex.search(check.pattern, answer.strip(), regex.IGNORECASE, timeout=REGEX_TIMEOUT_S)
            except TimeoutError:
                hit = None
            if hit is None:
                return f"check: {check.why}"
        return None


#: An answer to a start-with section must say at least this many words after the phrase.
MIN_WORDS_AFTER_START = 3


def _words_after(answer: str, start: str) -> int:
    """Words of the answer beyond its start phrase (case-insensitive; all its words if it does not begin so)."""
    text = answer.strip()
    if text.casefold().startswith(start.strip().casefold()):
        text = text[len(start.strip()):]
    return len(re.findall(r"\w+", text))


@dataclass
class TeacherAnswer:
    prompt: PoolPrompt
    targeted: bool
    relevant: bool  # the prompt is one the section's "relevant"-scoped checks apply to
    text: str | None  # None: no acceptable answer
    finished: bool = True
    source: str = "greedy"  # greedy | sample | none
    tries: int = 1
    rejected: dict[str, int] = field(default_factory=dict)
    start: str | None = None  # the phrase the teacher's answer was begun with (a "start with" check)

    @property
    def usable(self) -> bool:
        return self.text is not None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.prompt.id, "targeted": self.targeted, "answer": self.text, "finished": self.finished,
                "source": self.source, "tries": self.tries, "rejected": self.rejected, "start": self.start}


def cued(prompt: PoolPrompt, cue: str | None) -> list[dict[str, str]]:
    """The prompt's turns with the cue in brackets after the last user turn."""
    turns = [dict(m) for m in prompt.messages]
    if cue:
        turns[-1] = {"role": "user", "content": f"{turns[-1]['content']}\n\n({cue.strip()})"}
    return turns


def _key(data: dict[str, Any]) -> str:
    return hashlib.sha256(canonical.dumps(data)).hexdigest()


class _AnswerCache:
    def __init__(self, repo: Repository) -> None:
        self.folder = repo.cache_dir("distill") / "answers"

    def _path(self, key: str):
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> list[dict[str, Any]] | None:
        path = self._path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, list) and all(isinstance(d.get("answer"), str) for d in data):
                return data
        except (OSError, ValueError, AttributeError):
            pass  # missing or damaged: generate again
        return None

    def put(self, key: str, value: list[dict[str, Any]]) -> None:
        atomic_write_bytes(self._path(key), json.dumps(value).encode())


def teacher_answers(repo: Repository, model: Any, tokenizer: Any, base_id: str, system: str,
                    prompts: Sequence[tuple[PoolPrompt, bool, bool]], judge: Judge, cue: str | None,
                    max_new_tokens: int, samples: int, rounds: int, seed: int,
                    progress: Progress | None = None, batch_size: int = 64) -> list[TeacherAnswer]:
    """Answers to ``prompts`` (each ``(prompt, targeted, relevant)``), judged and resampled where needed."""
    from persona.lm.generate import generate

    cache = _AnswerCache(repo)
    chats = [build_messages(system, cued(p, cue if targeted else None)) for p, targeted, _ in prompts]
    starts = [judge.answer_start(relevant) if targeted else None for _, targeted, relevant in prompts]
    renders = [hashlib.sha256((render_chat(tokenizer, c, add_generation_prompt=True) + (start or "")).encode())
               .hexdigest() for c, start in zip(chats, starts, strict=True)]

    def run(indices: list[int], mode: dict[str, Any], phase: str) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {}
        todo = []
        for i in indices:
            key = _key({"base": base_id, "render_sha256": renders[i], "max_new_tokens": max_new_tokens, **mode})
            hit = cache.get(key)
            if hit is not None:
                out[i] = hit
            else:
                todo.append((i, key))
        done = len(indices) - len(todo)
        if progress is not None:
            progress(phase, done, len(indices))
        if todo:
            count = mode.get("samples", 1)
            temperature = mode.get("temperature", 0.0)

            def tick(n: int) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(phase, done, len(indices))

            def keep(positions: list[int], groups: list[list[Any]]) -> None:
                for position, gens in zip(positions, groups, strict=True):
                    i, key = todo[position]
                    start = starts[i] or ""
                    value = [{"answer": (start + g.text).strip(), "finished": g.finished} for g in gens]
                    cache.put(key, value)  # as each group finishes: an interrupted run keeps its work
                    out[i] = value

            generate(model, tokenizer, [chats[i] for i, _ in todo], max_new_tokens, samples=count,
                     temperature=temperature, seed=mode.get("seed", 0), batch_size=batch_size, progress=tick,
                     on_group=keep, answer_starts=[starts[i] or "" for i, _ in todo])
        return out

    answers = [TeacherAnswer(p, targeted, relevant, None, source="none", tries=0, start=start)
               for (p, targeted, relevant), start in zip(prompts, starts, strict=True)]
    greedy = run(list(range(len(prompts))), {"mode": "greedy"}, "teacher")
    pending = []
    for i, a in enumerate(answers):
        a.tries = 1
        first = greedy[i][0]
        why = judge.verdict(first["answer"], a.relevant) if a.targeted else judge.verdict(first["answer"], False)
        if why is None:
            a.text, a.finished, a.source = first["answer"], first["finished"], "greedy"
        else:
            a.rejected[why] = a.rejected.get(why, 0) + 1
            if a.targeted:
                pending.append(i)
    for round_ in range(rounds):
        if not pending or samples < 1:
            break
        mode = {"mode": "sample", "temperature": TEMPERATURE, "top_k": 50, "samples": samples,
                "seed": seed * 1000 + round_}
        drawn = run(pending, mode, f"teacher samples {round_ + 1}/{rounds}")
        still = []
        for i in pending:
            a = answers[i]
            for sample in drawn[i]:
                a.tries += 1
                why = judge.verdict(sample["answer"], a.relevant)
                if why is None:
                    a.text, a.finished, a.source = sample["answer"], sample["finished"], "sample"
                    break
                a.rejected[why] = a.rejected.get(why, 0) + 1
            if a.text is None:
                still.append(i)
        pending = still
    return answers
