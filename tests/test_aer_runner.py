"""TransformersRunner on the tiny random Llama: greedy generation, teacher-forced
log-probs at the right positions, and a full evaluation end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from persona.aer.evaluate import AerConfig, evaluate_aer, mean_kl
from persona.aer.probes import parse_probes
from persona.aer.runner import ModelRunner, TransformersRunner
from persona.aer.sections import parse_prompt
from persona.aer.tokens import render_chat, resolve_context_window

torch = pytest.importorskip("torch")

PROMPT = (
    "## Identity\nYou are a helpful assistant. You listen carefully before you answer.\n\n"
    "## Values\nListening means reflecting back what you heard, without suggesting a fix.\n\n"
    "## Task\nThe user asked a question about the weather.\n"
)
PROBES = [
    {
        "id": "i-1",
        "section": "identity",
        "messages": ["Hello! How can I help you today?"],
        "checks": {"must_match": ["listen"]},
        "reference": "I listen carefully before I answer.",  # curated: the KL is taken on it
    },
    {
        "id": "v-1",
        "section": "values",
        "messages": ["Thank you for sharing that with me."],
        "checks": {"must_not_match": ["fix"]},
        "reference": "Thank you for sharing that with me.",
    },
]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    return model, tok


def test_generate_is_greedy_and_deterministic(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    runner = TransformersRunner(model, tok, model_id="tiny")
    assert isinstance(runner, ModelRunner)
    msgs = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
    ]
    a = runner.generate(msgs, 6)
    assert isinstance(a, str) and a == runner.generate(msgs, 6)
    # greedy: the first generated token is the argmax after the generation prompt
    text = render_chat(tok, msgs, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        first = int(model(input_ids=ids).logits[0, -1].argmax())
    assert runner.generate(msgs, 1) == tok.decode([first], skip_special_tokens=True)
    assert runner.calls["generate"] == 3


def test_answer_logprobs_are_teacher_forced_at_the_right_positions(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    runner = TransformersRunner(model, tok, model_id="tiny")
    msgs = [{"role": "user", "content": "Hello! How can I help you today?"}]
    answer = "I am here to listen."
    lp = runner.answer_logprobs(msgs, answer)
    ans_ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert lp.shape == (len(ans_ids), model.config.vocab_size)
    assert np.allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-4)
    # position t must be the distribution after prompt + answer[:t], computed one prefix at a time
    prompt_ids = tok(render_chat(tok, msgs, add_generation_prompt=True), add_special_tokens=False)[
        "input_ids"
    ]
    for t in range(len(ans_ids)):
        ids = torch.tensor([prompt_ids + ans_ids[:t]])
        with torch.no_grad():
            expected = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1).numpy()
        assert np.allclose(lp[t], expected, atol=1e-4), t
    assert runner.answer_logprobs(msgs, "").shape == (0, model.config.vocab_size)
    # a prompt change moves the distribution; the same prompt does not
    other = runner.answer_logprobs([{"role": "system", "content": "You listen."}, *msgs], answer)
    kl = mean_kl(lp, other)
    assert kl is not None and kl > 0
    assert mean_kl(lp, runner.answer_logprobs(msgs, answer)) == pytest.approx(0.0, abs=1e-6)


def test_full_evaluation_on_the_tiny_random_model(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    doc = parse_prompt(PROMPT)
    probes = parse_probes(PROBES, "p.yaml", doc.names)
    base = TransformersRunner(model, tok, model_id="tiny-base")
    # the same weights under another id: the recipe is exactly as far from the
    # reference as the base, so every normalised KL is 1 and nothing is dropped
    same = TransformersRunner(model, tok, model_id="tiny-same")
    res = evaluate_aer(
        base=base,
        recipe=same,
        prompt=doc,
        probes=probes,
        tokenizer=tok,
        context_window=resolve_context_window(None, model.config),
        config=AerConfig(max_new_tokens=6, min_probes=1),
    )
    assert res.c_total == 256
    for name in ("identity", "values"):
        s = res.section(name)
        assert s.ref_pass == s.recipe_full_pass and s.base_without_pass == s.recipe_without_pass
        assert s.kl_base_without is not None and s.kl_recipe_without == pytest.approx(
            s.kl_base_without, rel=1e-5
        )
        if name == "identity":  # its probe's "listen" also occurs in the values section
            assert s.verdict == "LEAK" and "occurs in values" in s.reason
        elif s.verdict != "UNTESTED":
            assert s.verdict == "KEEP"
        if s.kl_ratio is not None:
            assert s.kl_ratio == pytest.approx(1.0, rel=1e-5)
    assert res.dropped == [] and res.aer_after == res.aer_before
    assert same.calls["generate"] > 0 and same.calls["answer_logprobs"] > 0
