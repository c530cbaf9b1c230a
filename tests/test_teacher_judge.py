"""The teacher's judge: which answers a distillation may learn from."""

from __future__ import annotations

from persona.train.teacher import MIN_WORDS_AFTER_START, Check, Judge

SECTION = 'You always start every reply with the word "Howdy!"'


def _style_judge() -> Judge:
    return Judge([Check(r"^\W*howdy\b", "all", "starts with Howdy", "Howdy!")], "## Style\n" + SECTION,
                 ["Howdy!"], SECTION)


def test_an_answer_that_is_only_the_opening_phrase_is_rejected() -> None:
    # Seen on SmolLM2: begun with "Howdy!", the teacher often stops there; a student trained on
    # that answered "Howdy!" and nothing else to 11 of 30 general questions.
    judge = _style_judge()
    assert MIN_WORDS_AFTER_START == 3
    assert judge.verdict("Howdy!", True) == "empty"
    assert judge.verdict("Howdy! Howdy!", True) == "empty"
    assert judge.verdict("howdy!\n\nSure thing.", True) == "empty"
    assert judge.verdict("Howdy! Berlin is the capital.", True) is None
    # the check itself still comes first for answers that do not start with the phrase
    assert judge.verdict("Berlin is the capital of Germany.", True).startswith("check")


def test_sections_without_an_opening_phrase_keep_short_answers() -> None:
    judge = Judge([Check(r"\btimmy\b", "relevant", "says timmy")], "## Identity\nYour name is Timmy.", [],
                  "Your name is Timmy.")
    assert judge.verdict("I'm Timmy.", True) is None
