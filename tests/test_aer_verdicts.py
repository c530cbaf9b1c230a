"""Verdicts that cannot be fooled: leak, overlap, too few probes, damage and parroting, on the
marker-driven FakeRunner (its answers depend only on marker strings in its input)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from persona.aer.evaluate import evaluate_aer
from persona.aer.lint import find_leaks, lint_probes
from persona.aer.overlap import TrainingPrompts, find_overlaps, similarity
from persona.aer.parroting import parroted_span
from persona.aer.probes import parse_probes
from persona.aer.runner import FakeRunner
from persona.aer.sections import parse_prompt
from persona.aer.stats import format_rate, wilson_interval

IDENTITY = "## Identity\nID_MARK Your name is Timmy. You are Timmy, a cheerful assistant.\n\n"
TASK = "## Task\nTASK_MARK Help with the garden.\n"
PROMPT = "# Soul\n\n" + IDENTITY + TASK
RULES = {"ID_MARK": "I am Timmy.", "TASK_MARK": "Gardening it is."}
QUESTIONS = ["Who is there?", "Name please", "Introduce yourself", "Who made this chat",
             "Tell me about you", "Qui es-tu", "Wie heisst du", "Your badge says?", "Sign this card",
             "What do friends say you are"]


def probes(n: int, section: str = "identity", pattern: str = r"\btimmy\b") -> list[dict[str, Any]]:
    return [{"id": f"p{i}", "section": section, "messages": [QUESTIONS[i]], "checks": {"must_match": [pattern]}}
            for i in range(n)]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


def evaluate(tok: Any, prompt: str = PROMPT, n: int = 8, recipe: FakeRunner | None = None, **kw: Any):
    doc = parse_prompt(prompt)
    ps = parse_probes(kw.pop("probe_list", None) or probes(n), "probes.yaml", doc.names)
    recipe = recipe or FakeRunner(RULES, baked=["ID_MARK"], model_id="recipe")
    return evaluate_aer(base=FakeRunner(RULES, model_id="base"), recipe=recipe, prompt=doc, probes=ps,
                        tokenizer=tok, context_window=1000, **kw)


def test_a_baked_section_with_enough_clean_probes_is_dropped(tok: Any) -> None:
    res = evaluate(tok)
    ident = res.section("identity")
    assert ident.verdict == "DROP" and ident.dropped
    assert ident.usable == 8 and ident.passed == {"ref": 8, "base_without": 0, "recipe_without": 8,
                                                  "recipe_full": 8}
    assert ident.leaks == () and ident.overlaps == ()


def test_too_few_probes_get_no_drop(tok: Any) -> None:
    ident = evaluate(tok, n=7).section("identity")
    assert ident.verdict == "TOO FEW" and not ident.dropped
    assert "only 7 usable probes (at least 8" in ident.reason
    assert evaluate(tok, n=8).section("identity").verdict == "DROP"


def test_a_name_left_in_the_preamble_is_a_leak(tok: Any) -> None:
    leaky = "# Soul\n\n<!-- The prompt for the Timmy demo. -->\n\n" + IDENTITY + TASK
    res = evaluate(tok, prompt=leaky)
    ident = res.section("identity")
    assert ident.verdict == "LEAK" and not ident.dropped and res.dropped == []
    assert "'Timmy'" in ident.reason and "occurs in preamble at line 3" in ident.reason
    assert ident.leaks[0]["found_in"] == "preamble" and ident.leaks[0]["line"] == 3
    # the same words anywhere else in the remaining prompt leak too, via the probes' own pattern
    leaky_task = PROMPT.replace("Help with the garden.", "Help with the garden; sign as TIMMY.")
    findings = find_leaks(parse_prompt(leaky_task), "identity",
                          parse_probes(probes(8), "p.yaml", ["identity", "task", "preamble"]))
    assert {f.found_in for f in findings} == {"task"}
    assert any(f.source.startswith("probe p0 must_match") for f in findings)


def test_probes_that_repeat_training_prompts_are_left_out(tok: Any) -> None:
    training = TrainingPrompts({"identity": ["Who is there?!", "Introduce yourself, please", "unrelated words"]})
    res = evaluate(tok, n=10, training=training)
    ident = res.section("identity")
    assert sorted(o["probe"] for o in ident.overlaps) == ["p0", "p2"]
    assert ident.probes == 10 and ident.usable == 8 and ident.verdict == "DROP"
    assert any("left out as near-repeats" in note for note in res.notes)
    # with two fewer probes the overlap leaves too few
    short = evaluate(tok, n=9, training=training).section("identity")
    assert short.usable == 7 and short.verdict == "TOO FEW" and "near-repeats" in short.reason


def test_overlap_measure() -> None:
    assert similarity("What is your name?", "What's your name?") >= 0.5
    assert similarity("Who are you?", "Who are you, and what do you do?") < 0.5
    assert similarity("What is your name?", "Who made you?") < 0.2
    assert similarity("Comment tu t'appelles ?", "comment tu t’appelles") == 1.0
    ps = parse_probes(probes(3), "p.yaml", ["identity"])
    found = find_overlaps(ps, TrainingPrompts({"v": ["who is there"]}))
    assert list(found) == ["p0"] and found["p0"].vector == "v" and found["p0"].similarity == 1.0


def test_damage_to_general_questions_blocks_every_drop(tok: Any) -> None:
    general = parse_probes([
        {"id": f"g{i}", "section": "general", "messages": [f"general question {i}"],
         "checks": {"must_match": ["sure thing"]}} for i in range(10)], "general.yaml")
    rules = dict(RULES, general="Sure thing.")
    base = FakeRunner(rules, model_id="base")
    # baked only where the rest of the prompt is present: without a system prompt it is the base
    harmless = FakeRunner(rules, baked={"ID_MARK": ["TASK_MARK"]}, model_id="harmless")
    doc = parse_prompt(PROMPT)
    ps = parse_probes(probes(8), "p.yaml", doc.names)
    ok = evaluate_aer(base=base, recipe=harmless, prompt=doc, probes=ps, tokenizer=tok, context_window=1000,
                      general=general)
    assert ok.damage is not None and not ok.damage.damaged and ok.damage.base_passed == 10
    assert ok.section("identity").verdict == "DROP"
    # a recipe that lost its general answers (its "general" marker no longer fires)
    broken = FakeRunner(RULES, baked={"ID_MARK": ["TASK_MARK"]}, model_id="broken")
    res = evaluate_aer(base=base, recipe=broken, prompt=doc, probes=ps, tokenizer=tok, context_window=1000,
                       general=general)
    assert res.damage is not None and res.damage.damaged
    assert res.damage.recipe_passed == 0 and "0/10 general questions, the base 10/10" in res.damage.reason
    # a recipe whose baked behaviour bleeds into every answer moves the neutral distribution
    bleeding = FakeRunner(rules, baked=["ID_MARK"], model_id="bleeding")
    bled = evaluate_aer(base=base, recipe=bleeding, prompt=doc, probes=ps, tokenizer=tok, context_window=1000,
                        general=general)
    assert bled.damage is not None and bled.damage.damaged and bled.damage.recipe_passed == 10
    assert "on neutral prompts" in bled.damage.reason
    assert res.section("identity").verdict == "KEEP" and res.section("identity").reason.startswith("DAMAGE")
    assert res.dropped == [] and any(n.startswith("DAMAGE") for n in res.notes)


def test_parroting_answers_fail_their_probe(tok: Any) -> None:
    parrot = FakeRunner({"ID_MARK": "When anyone asks, remember: your name is Timmy. You are Timmy, a cheerful "
                                    "assistant.", "TASK_MARK": "Gardening it is."},
                        baked=["ID_MARK"], model_id="parrot")
    res = evaluate(tok, recipe=parrot)
    ident = res.section("identity")
    assert ident.recipe_without_pass == 0 and ident.verdict == "KEEP"
    run = res.runs["recipe + full prompt"][0]
    assert not run.passed and run.parroted and any("parrots the prompt" in f for f in run.failures)


def test_parroting_measure() -> None:
    prompt = PROMPT + '## Style\nYou always end every reply with the exact words "Over and out."\n'
    assert parroted_span("You always end every reply with the exact words", prompt)
    assert parroted_span("I'm Timmy, a cheerful assistant. Over and out.", prompt, ["Over and out."]) is None
    assert parroted_span("I help with the garden, always happy to help with the garden.", prompt) is None
    assert parroted_span("Sure.\n## Identity\nmore", prompt) == "## Identity"


def test_wilson_interval_by_hand() -> None:
    low, high = wilson_interval(4, 4)
    assert low == pytest.approx(0.5101, abs=1e-4) and high == 1.0
    low, high = wilson_interval(9, 12)
    assert (round(low, 3), round(high, 3)) == (0.468, 0.911)
    assert wilson_interval(0, 12)[0] == 0.0
    assert format_rate(9, 12) == "9/12 75% [47%-91%]"
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_lint_without_a_model(tok: Any) -> None:
    doc = parse_prompt("# Soul\n<!-- Timmy -->\n" + IDENTITY + TASK)
    lint = lint_probes(doc, parse_probes(probes(3), "p.yaml", doc.names), None)
    data = lint.to_json()
    ident = data["sections"]["identity"]
    assert ident["too_few"] and ident["usable_probes"] == 3 and ident["leaks"][0]["found_in"] == "preamble"
    assert data["leaks"] and data["overlaps"] == [] and "overlap with training prompts not checked" in data["notes"][0]


def test_looping_answers_fail_their_probe(tok: Any) -> None:
    from persona.aer.repetition import repetition

    assert repetition("Howdy! Howdy! Howdy!") == "'howdy' three times in a row"
    assert repetition("I'm a chatbot. I'm a chatbot. I'm a chatbot.") == "\"i'm a chatbot\" 3 times"
    assert repetition("I'm Timmy, a friendly assistant. I'm here to help with any questions you have.") is None
    assert repetition("Boil water, add the egg, cook for 8 minutes, then cool it in cold water.") is None
    looping = FakeRunner({"ID_MARK": "I am Timmy. I am Timmy. I am Timmy.", "TASK_MARK": "Gardening it is."},
                         baked=["ID_MARK"], model_id="looping")
    res = evaluate(tok, recipe=looping)
    run = res.runs["recipe + full prompt"][0]
    assert not run.passed and any(f.startswith("repeats itself") for f in run.failures)
    assert res.section("identity").recipe_without_pass == 0


def test_another_baked_behaviour_does_not_count_against_a_section(tok: Any) -> None:
    # The recipe also carries a style the prompted base never shows ("Howdy!" before every
    # answer): its answers, and so its distribution, differ from the reference's everywhere.
    # What is judged is how much removing identity still moves the recipe, not how far the
    # recipe is from the prompted base.
    rules = {"HOWDY_MARK": "Howdy!", **RULES}
    both = FakeRunner(rules, baked=["HOWDY_MARK", "ID_MARK"], model_id="both")
    ident = evaluate(tok, recipe=both).section("identity")
    assert ident.verdict == "DROP" and ident.kl_ratio == pytest.approx(0.0)
    assert ident.kl_probes == 8
    # the same style without identity in the weights: removing identity still moves the recipe
    # (by as much as the base, give or take what the style marker does to the logits), and its
    # answers lose the name
    style_only = FakeRunner(rules, baked=["HOWDY_MARK"], model_id="style")
    ident = evaluate(tok, recipe=style_only).section("identity")
    assert ident.verdict == "KEEP" and ident.kl_ratio is not None and ident.kl_ratio > 0.5
    assert ident.passed["recipe_without"] == 0


def test_echo_measure_for_teacher_answers() -> None:
    from persona.aer.parroting import echoed_instruction
    from persona.train.teacher import Check, Judge

    section = "Your name is Timmy. You are Timmy, a cheerful assistant. When anyone asks, answer that you are Timmy."
    assert echoed_instruction("(You're Timmy, a cheerful assistant.)", section) == "timmy a cheerful assistant"
    assert echoed_instruction("Sure. (Your name is Timmy.)", section) == "your name is timmy"
    # first person, or second person without the section's words: a self-introduction, not an echo
    assert echoed_instruction("Nice to meet you. I'm Timmy, a cheerful assistant.", section) is None
    assert echoed_instruction("No, my name is Timmy.", section) is None
    assert echoed_instruction("Are you asking me? I'm Timmy!", section) is None
    # words the section asks the model to say never count
    assert echoed_instruction('You know, "Howdy!" to you', 'You always start with "Howdy!" to you',
                              allowed=["Howdy! to you"]) is None
    judge = Judge([Check(r"\btimmy\b", "relevant", "says timmy")], "## Identity\n" + section, [], section)
    assert judge.verdict("Howdy! (You are Timmy, a cheerful assistant.)", True) == "parrot"  # 6 words verbatim
    assert judge.verdict("Howdy! (You're Timmy, a cheerful assistant.)", True) == "echo"
    assert judge.verdict("Hi! I'm Timmy, a cheerful assistant.", True) is None
