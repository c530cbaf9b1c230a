"""The AER evaluation on the marker-driven FakeRunner: verdicts, KL, greedy drop, cache."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from persona.aer.evaluate import AerConfig, RunCache, decide, evaluate_aer, mean_kl
from persona.aer.probes import parse_probes
from persona.aer.runner import FakeRunner, ModelRunner
from persona.aer.sections import parse_prompt
from persona.errors import Incompatible, InvalidInput

PROMPT = (
    "## Identity\nID_MARK Your name is Timmy, and you are a cheerful and patient helper.\n\n"
    "## Style\nSTYLE_MARK Start every reply with ahoy.\n\n"
    "## Values\nVALUES_MARK Never share secrets.\n\n"
    "## Memory\nThe user has a cat.\n\n"
    "## Notes {kind=behaviour}\n\n"
    "## Task\nTASK_MARK Help with the garden.\n"
)

RULES = {
    "ID_MARK": "I am Timmy.",
    "STYLE_MARK": "Ahoy!",
    "VALUES_MARK": "No secrets here.",
    "TASK_MARK": "Gardening it is.",
}


def probe(pid: str, section: str, pattern: str) -> dict[str, Any]:
    return {
        "id": pid,
        "section": section,
        "messages": [f"question {pid}"],
        "checks": {"must_match": [pattern]},
    }


PROBES = [
    probe("id-1", "identity", "timmy"),
    probe("id-2", "identity", r"\btimmy\b"),
    probe("style-1", "style", "ahoy"),
    probe("values-1", "values", "no secrets"),
    probe("memory-1", "memory", "gardening"),  # does not depend on the memory section
    probe("task-1", "task", "gardening"),
]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


def run(
    tok: Any,
    base: ModelRunner,
    recipe: ModelRunner,
    prompt: str = PROMPT,
    probes: list | None = None,
    **kw: Any,
):
    doc = parse_prompt(prompt)
    ps = parse_probes(probes if probes is not None else PROBES, "probes.yaml", doc.names)
    # One or two probes per section keep these tests about the grid and the greedy drop;
    # the minimum number of probes for a DROP has its own tests (test_aer_verdicts.py).
    kw.setdefault("config", AerConfig(min_probes=1))
    return evaluate_aer(
        base=base, recipe=recipe, prompt=doc, probes=ps, tokenizer=tok, context_window=1000, **kw
    )


def test_verdicts_drop_keep_untested(tok: Any) -> None:
    base = FakeRunner(RULES, model_id="base")
    # The recipe has identity baked in; it also says "No secrets here." from the
    # task marker, so it passes the values probe without VALUES_MARK but its
    # distribution is no closer to the reference than the base's.
    recipe_rules = dict(RULES, TASK_MARK="Gardening it is. No secrets here.")
    recipe = FakeRunner(recipe_rules, baked=["ID_MARK"], model_id="recipe")
    res = run(tok, base, recipe)

    ident = res.section("identity")
    assert (
        ident.ref_pass,
        ident.base_without_pass,
        ident.recipe_without_pass,
        ident.recipe_full_pass,
    ) == (1, 0, 1, 1)
    assert ident.kl_base_without is not None and ident.kl_base_without > 0.01
    assert ident.kl_recipe_without == pytest.approx(0.0, abs=1e-12)
    assert ident.kl_ratio == pytest.approx(0.0, abs=1e-12)
    assert ident.verdict == "DROP" and ident.dropped

    style = res.section("style")
    assert style.verdict == "KEEP" and style.recipe_without_pass == 0
    assert "recipe without style passes 0% vs reference 100%" in style.reason

    values = res.section("values")
    assert values.recipe_without_pass == 1 and values.kl_ratio == pytest.approx(1.0)
    assert values.verdict == "KEEP" and "normalised KL 1.00 > 0.5" in values.reason
    assert "passes 100%" not in values.reason  # only the failed criterion is the reason

    memory = res.section("memory")
    assert memory.verdict == "UNTESTED" and memory.kl_base_without == pytest.approx(0.0, abs=1e-12)
    assert "probes do not exercise memory" in memory.reason

    notes = res.section("notes")
    assert notes.verdict == "UNTESTED" and "no probes exercise notes" in notes.reason

    task = res.section("task")
    assert (
        task.verdict == "KEEP" and "never dropped" in task.reason and task.base_without_pass is None
    )

    assert res.dropped == ["identity"]
    assert res.c_alignment_before == sum(s.tokens for s in res.sections if s.kind != "task")
    assert res.c_alignment_after == res.c_alignment_before - ident.tokens
    assert res.aer_before == pytest.approx(1 - res.c_alignment_before / 1000)
    assert res.aer_after > res.aer_before
    assert any("untested" in n and "memory" in n for n in res.notes)


def test_modes_report_ceiling_dropped_and_no_alignment(tok: Any) -> None:
    base = FakeRunner(RULES, model_id="base")
    recipe = FakeRunner(RULES, baked=["ID_MARK"], model_id="recipe")
    res = run(tok, base, recipe)
    modes = {m.name: m for m in res.modes}
    ceiling = modes["full prompt (ceiling)"]
    dropped = modes["recipe, DROP sections removed"]
    none = modes["recipe, no alignment prompt"]
    floor = modes["base, no alignment prompt (floor)"]
    assert ceiling.pass_rate == 1.0 and ceiling.probes == len(PROBES)
    assert dropped.dropped == ("identity",) and dropped.pass_rate == 1.0
    assert none.pass_rate == pytest.approx(4 / 6)  # identity baked; style and values lost
    assert floor.pass_rate == pytest.approx(2 / 6)
    assert ceiling.input_tokens > dropped.input_tokens > none.input_tokens
    assert none.input_tokens == floor.input_tokens
    assert ceiling.system_tokens - dropped.system_tokens == res.section("identity").saving
    assert [r.passed for r in res.runs["full prompt (ceiling)"]] == [True] * 6


def test_collateral_damage_in_the_joint_recheck(tok: Any) -> None:
    prompt = (
        "## Identity\nID_MARK Your name is Timmy, a very cheerful and very patient helper.\n\n"
        "## Values\nVALUES_MARK Never share secrets.\n\n"
        "## Task\nTASK_MARK Help.\n"
    )
    probes = [
        probe("id-1", "identity", "timmy"),
        probe("v-1", "values", "no secrets"),
        probe("t-1", "task", "gardening"),
    ]
    base = FakeRunner(RULES, model_id="base")
    # identity is baked but only while VALUES_MARK is still in the prompt; values is
    # baked unconditionally. Each alone is droppable; together identity breaks.
    recipe = FakeRunner(
        RULES, baked={"ID_MARK": ["VALUES_MARK"], "VALUES_MARK": []}, model_id="recipe"
    )
    res = run(tok, base, recipe, prompt, probes)
    ident, values = res.section("identity"), res.section("values")
    assert ident.saving > values.saving  # identity is tried first
    assert ident.verdict == "DROP" and ident.dropped
    assert values.verdict == "KEEP" and not values.dropped
    assert "collateral damage" in values.reason and "identity 0% < 100%" in values.reason
    assert [(s.section, s.accepted) for s in res.drop_steps] == [
        ("identity", True),
        ("values", False),
    ]
    assert res.drop_steps[1].trial == ("identity", "values")
    assert res.dropped == ["identity"]


def test_everything_droppable_when_recipe_bakes_it_all(tok: Any) -> None:
    base = FakeRunner(RULES, model_id="base")
    recipe = FakeRunner(RULES, baked=["ID_MARK", "STYLE_MARK", "VALUES_MARK"], model_id="recipe")
    res = run(tok, base, recipe)
    assert sorted(res.dropped) == ["identity", "style", "values"]
    savings = [res.section(n).saving for n in [s.section for s in res.drop_steps]]
    assert savings == sorted(savings, reverse=True)
    modes = {m.name: m for m in res.modes}
    assert modes["recipe, DROP sections removed"].pass_rate == 1.0


def test_run_cache_second_run_makes_no_model_calls(tok: Any, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = (
        FakeRunner(RULES, model_id="base"),
        FakeRunner(RULES, baked=["ID_MARK"], model_id="recipe"),
    )
    res1 = run(tok, *first, cache=RunCache(cache_dir))
    assert sum(first[0].calls.values()) > 0 and sum(first[1].calls.values()) > 0
    assert any(cache_dir.rglob("*.json"))

    second = (
        FakeRunner(RULES, model_id="base"),
        FakeRunner(RULES, baked=["ID_MARK"], model_id="recipe"),
    )
    res2 = run(tok, *second, cache=RunCache(cache_dir))
    assert sum(second[0].calls.values()) == 0 and sum(second[1].calls.values()) == 0
    assert res2.cache_misses == 0
    assert [s.verdict for s in res2.sections] == [s.verdict for s in res1.sections]
    assert [s.kl_base_without for s in res2.sections] == [s.kl_base_without for s in res1.sections]

    # change only the style section: runs whose rendered input does not change are reused
    changed = PROMPT.replace("Start every reply with ahoy.", "Say ahoy first.")
    third = (
        FakeRunner(RULES, model_id="base"),
        FakeRunner(RULES, baked=["ID_MARK"], model_id="recipe"),
    )
    run(tok, *third, prompt=changed, cache=RunCache(cache_dir))
    total_first = sum(first[0].calls.values()) + sum(first[1].calls.values())
    total_third = sum(third[0].calls.values()) + sum(third[1].calls.values())
    assert 0 < total_third < total_first

    # another model id is another model: nothing reused for it (the base's answers
    # are; its teacher-forced log-probs are recomputed for the new KL pairs)
    fourth = (
        FakeRunner(RULES, model_id="base"),
        FakeRunner(RULES, baked=["ID_MARK"], model_id="recipe-v2"),
    )
    run(tok, *fourth, cache=RunCache(cache_dir))
    assert fourth[0].calls["generate"] == 0 and fourth[1].calls["generate"] > 0


def test_corrupt_cache_entries_are_misses(tok: Any, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    run(
        tok,
        FakeRunner(RULES, model_id="b"),
        FakeRunner(RULES, model_id="r"),
        cache=RunCache(cache_dir),
    )
    for f in cache_dir.rglob("*.json"):
        f.write_text("{not json")
    base, recipe = FakeRunner(RULES, model_id="b"), FakeRunner(RULES, model_id="r")
    run(tok, base, recipe, cache=RunCache(cache_dir))
    assert base.calls["generate"] > 0


def test_progress_callback(tok: Any) -> None:
    seen: list[tuple[int, int, str]] = []
    run(
        tok,
        FakeRunner(RULES, model_id="b"),
        FakeRunner(RULES, model_id="r"),
        progress=lambda d, t, label: seen.append((d, t, label)),
    )
    dones = [d for d, _, _ in seen]
    assert dones == sorted(dones) and all(d <= t for d, t, _ in seen)
    assert seen[-1][0] == seen[-1][1] > 0
    assert any("recipe without identity" in label for _, _, label in seen)


def test_mean_kl_by_hand() -> None:
    p = np.log(np.array([[0.5, 0.5], [0.25, 0.75]]))
    q = np.log(np.array([[0.9, 0.1], [0.25, 0.75]]))
    expected = (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1) + 0.0) / 2
    assert mean_kl(p, q) == pytest.approx(expected)
    assert mean_kl(p, p) == pytest.approx(0.0)
    assert mean_kl(np.zeros((0, 2)), np.zeros((0, 2))) is None
    with np.errstate(divide="ignore"):
        zero = np.log(np.array([[1.0, 0.0]]))
        assert mean_kl(np.log(np.array([[0.5, 0.5]])), zero) == math.inf
    with pytest.raises(Incompatible):
        mean_kl(p, q[:1])


def test_decide_thresholds_and_kl_normalisation() -> None:
    cfg = AerConfig(tolerance=0.05, max_kl_ratio=0.5, kl_floor=0.01)
    # ratio = KL(ref || recipe-S) / KL(ref || base-S)
    v, _, ratio = decide("s", 1.0, 0.0, 1.0, 2.0, 0.8, cfg)
    assert (v, ratio) == ("DROP", pytest.approx(0.4))
    v, reason, ratio = decide("s", 1.0, 0.0, 1.0, 2.0, 1.2, cfg)
    assert (v, ratio) == ("KEEP", pytest.approx(0.6)) and "normalised KL 0.60 > 0.5" in reason
    assert decide("s", 1.0, 0.0, 0.96, 2.0, 0.1, cfg)[0] == "DROP"  # within tolerance
    v, reason, _ = decide("s", 1.0, 0.0, 0.9, 2.0, 0.1, cfg)
    assert v == "KEEP" and "passes 90% vs reference 100%" in reason
    # pass rate unchanged but KL moved: tested, decided on KL
    assert decide("s", 1.0, 1.0, 1.0, 0.5, 0.05, cfg)[0] == "DROP"
    # neither moved: untested
    assert decide("s", 1.0, 1.0, 0.0, 0.005, 3.0, cfg)[0] == "UNTESTED"
    # pass rate moved but the section barely moves the reference's distribution on its passing
    # answers: the KL says nothing either way, the pass rates decide (and the reason says so)
    v, reason, ratio = decide("s", 1.0, 0.0, 1.0, 0.001, 0.5, cfg)
    assert (v, ratio) == ("DROP", None) and "judged on pass rates" in reason
    assert decide("s", 1.0, 0.0, 0.5, 0.001, 0.002, cfg)[0] == "KEEP"
    # the base ignores the section (nothing moves) but the recipe does what the probes ask:
    # the probes do discriminate, so it is not UNTESTED
    v, reason, _ = decide("s", 0.0, 0.0, 0.9, 0.001, 0.3, cfg)
    assert v == "DROP" and "reference itself passes only 0%" in reason
    # no KL evidence (no reference answer passes): pass rates decide, and say so
    v, reason, _ = decide("s", 1.0, 0.0, 1.0, None, None, cfg)
    assert v == "DROP" and "no KL evidence" in reason
    # a reference that fails its own probes is flagged
    assert "reference itself passes only 50%" in decide("s", 0.5, 0.0, 0.5, 1.0, 0.1, cfg)[1]


def test_config_and_input_validation(tok: Any) -> None:
    with pytest.raises(InvalidInput):
        AerConfig(tolerance=2.0)
    with pytest.raises(InvalidInput):
        AerConfig(max_new_tokens=0)
    doc = parse_prompt(PROMPT)
    other = parse_probes([probe("x", "elsewhere", "a")], "p.yaml")
    with pytest.raises(InvalidInput, match="probe 'x': field 'section'"):
        evaluate_aer(
            base=FakeRunner(RULES),
            recipe=FakeRunner(RULES),
            prompt=doc,
            probes=other,
            tokenizer=tok,
            context_window=1000,
        )


def test_fake_runner_is_deterministic_and_marker_driven() -> None:
    r = FakeRunner(RULES, baked={"STYLE_MARK": ["TASK_MARK"]})
    msgs = [{"role": "system", "content": "ID_MARK TASK_MARK"}, {"role": "user", "content": "hi"}]
    assert r.generate(msgs, 64) == "I am Timmy. Ahoy! Gardening it is."
    assert r.generate(msgs, 3) == "I am Timmy."  # max_new_tokens counts words
    assert r.generate([{"role": "user", "content": "hi"}], 64) == "I am not sure."
    lp = r.answer_logprobs(msgs, "one two three")
    assert lp.shape == (3, 32)
    assert np.allclose(np.exp(lp).sum(axis=1), 1.0)
    assert np.array_equal(lp, r.answer_logprobs(msgs, "uno dos tres"))
    assert isinstance(r, ModelRunner)
