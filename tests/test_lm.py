"""persona.lm: prefix-shared generation and teacher-forced logits equal the plain computations,
and the CPU budget respects affinity and cgroup quotas."""

from __future__ import annotations

import os

import pytest
import torch

from persona import cpu
from persona.lm import forward, generate
from persona.train.data import Example, encode
from persona.train.objectives import collate
from tests.fixtures.tiny import _load_model

SYSTEM = "You are a helpful assistant. You listen carefully before you answer. " * 3


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    return _load_model(tiny_model_dir), AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _chats(questions):
    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in questions]


def _reference_greedy(model, tokenizer, chat, max_new):
    """Token-by-token greedy decoding with a plain full forward each step: the definition."""
    ids = generate.encode_chats(tokenizer, [chat])[0]
    eos = set(generate.eos_ids(model, tokenizer))
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
            tok = int(logits.argmax())
            if tok in eos:
                return out, True
            out.append(tok)
    return out, False


def test_batched_prefix_shared_greedy_equals_one_at_a_time(model_and_tokenizer):
    model, tok = model_and_tokenizer
    questions = ["Hello!", "How can I help you today?", "Thank you for sharing that with me.", "Why?"]
    batched = generate.greedy(model, tok, _chats(questions), 12, batch_size=3)
    for q, g in zip(questions, batched, strict=True):
        ids, finished = _reference_greedy(model, tok, _chats([q])[0], 12)
        assert list(g.token_ids) == ids
        assert g.finished == finished
        assert g.text == tok.decode(ids, skip_special_tokens=True)


def test_sampling_is_reproducible_and_seed_dependent(model_and_tokenizer):
    model, tok = model_and_tokenizer
    chats = _chats(["Hello!", "Why?"])
    a = generate.generate(model, tok, chats, 8, samples=3, temperature=1.0, seed=5)
    b = generate.generate(model, tok, chats, 8, samples=3, temperature=1.0, seed=5)
    c = generate.generate(model, tok, chats, 8, samples=3, temperature=1.0, seed=6)
    assert [[g.token_ids for g in row] for row in a] == [[g.token_ids for g in row] for row in b]
    assert [[g.token_ids for g in row] for row in a] != [[g.token_ids for g in row] for row in c]
    assert all(len(row) == 3 for row in a)


def test_common_prefix():
    assert generate.common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert generate.common_prefix([[5], [6]]) == 0
    assert generate.common_prefix([]) == 0


def _batch(tok, answers):
    examples = [Example(({"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                         {"role": "assistant", "content": a}), f"t:{i}") for i, (q, a) in enumerate(answers)]
    return collate([encode(tok, e, 512) for e in examples], pad_id=0)


def test_shared_prefix_logits_and_gradients_equal_the_plain_forward(model_and_tokenizer):
    model, tok = model_and_tokenizer
    batch = _batch(tok, [("Hello!", "I am here to listen."), ("Why?", "Because it sounds difficult."),
                         ("How can I help?", "Thank you.")])
    assert forward.shared_prefix_length(batch["input_ids"], batch["attention_mask"],
                                        int(torch.nonzero(batch["target_mask"].any(0))[0, 0])) > 10
    weight = model.model.layers[0].self_attn.v_proj.weight
    weight.requires_grad_(True)
    shared = forward.target_logits(model, batch)
    grad_shared = torch.autograd.grad(shared.logsumexp(-1).sum(), weight)[0]
    mask = batch["target_mask"]
    plain = forward._plain(model, batch["input_ids"], batch["attention_mask"], mask, int(mask.sum()))
    grad_plain = torch.autograd.grad(plain.logsumexp(-1).sum(), weight)[0]
    assert shared.shape == plain.shape == (int(mask.sum()), model.config.vocab_size)
    torch.testing.assert_close(shared, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_shared, grad_plain, rtol=1e-3, atol=1e-5)


def test_a_single_row_or_no_shared_prefix_uses_the_plain_forward(model_and_tokenizer):
    model, tok = model_and_tokenizer
    batch = _batch(tok, [("Hello!", "I am here.")])
    assert forward.shared_prefix_length(batch["input_ids"], batch["attention_mask"], 5) == 0
    with torch.no_grad():
        out = forward.target_logits(model, batch)
    assert out.shape[0] == int(batch["target_mask"].sum())


def test_cpu_budget_reads_cgroup_v2_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu._cgroup_v2_quota(tmp_path) in (1.5, None)  # None only if /proc/self/cgroup names a real subgroup
    assert 1 <= cpu.available_cpus(tmp_path) <= len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu._cgroup_v2_quota(tmp_path) is None


def test_cpu_budget_respects_affinity():
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {sorted(before)[0]})
        assert cpu.available_cpus() == 1
    finally:
        os.sched_setaffinity(0, before)


def test_thread_budget_overrides(monkeypatch):
    from persona.errors import InvalidInput

    monkeypatch.setenv("PERSONA_THREADS", "3")
    assert cpu.thread_budget() == 3
    assert cpu.thread_budget(1) == 1
    monkeypatch.setenv("PERSONA_THREADS", "lots")
    with pytest.raises(InvalidInput, match="PERSONA_THREADS"):
        cpu.thread_budget()
    with pytest.raises(InvalidInput, match="--threads"):
        cpu.thread_budget(0)
