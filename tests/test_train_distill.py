"""Context distillation on the tiny model: the student never sees the section, teacher work
is cached, both objectives store reproducible vectors, the KL is the one documented; and the
slow SmolLM2 test that a distilled identity answers by name without its section."""

from __future__ import annotations

import math
import os
import time
from types import SimpleNamespace

import pytest
import torch

from persona.errors import InvalidInput, NotFound
from persona.porcelain import models
from persona.repo import Repository
from persona.store import objects as obj
from persona.train import distill, porcelain
from persona.train.lora import LoraSettings
from persona.train.porcelain import TrainOptions

PROMPT = "# Soul\n\n## Identity {kind=identity}\nYour name is Timmy.\n\n## Task\nAnswer briefly.\n"


@pytest.fixture
def repo(tmp_path, tiny_model_dir) -> Repository:
    repo, _ = Repository.init(tmp_path / "store")
    models.import_base(repo, str(tiny_model_dir), name="tiny")
    return repo


@pytest.fixture
def files(tmp_path) -> SimpleNamespace:
    prompt = tmp_path / "SOUL.md"
    prompt.write_text(PROMPT)
    questions = tmp_path / "questions.txt"
    questions.write_text("What is your name?\n\nWho are you?\nIntroduce yourself.\n")
    return SimpleNamespace(prompt=prompt, questions=questions)


def _options(**overrides) -> TrainOptions:
    settings = {"lora": LoraSettings(rank=4, alpha=8.0), "steps": 2, "lr": 5e-3, "batch_size": 2,
                "max_length": 128, "device": "cpu", "checkpoint_every": 0}
    settings.update(overrides)
    return TrainOptions(**settings)


def _distill(repo, files, name, objective="sft", **kwargs):
    return porcelain.train_distill(repo, name, files.prompt, "identity", files.questions, objective=objective,
                                   teacher_max_new_tokens=6, top_k=kwargs.pop("top_k", 8),
                                   options=_options(**kwargs))


def test_student_is_trained_without_the_section_and_the_teacher_with_it(repo, files, monkeypatch):
    calls = []
    original = porcelain.encode_all

    def spy(tokenizer, examples, max_length):
        calls.append(list(examples))
        return original(tokenizer, examples, max_length)

    monkeypatch.setattr(porcelain, "encode_all", spy)
    result = _distill(repo, files, "identity", objective="kl")
    student, teacher = calls
    assert [e.messages[0]["content"] for e in student] == ["# Soul\n\n## Task\nAnswer briefly.\n"] * 3
    assert [e.messages[0]["content"] for e in teacher] == [PROMPT] * 3
    for s, t, answer in zip(student, teacher, result.teacher, strict=True):
        assert s.messages[1:] == t.messages[1:]
        assert s.messages[2] == {"role": "assistant", "content": answer["answer"]}
        assert s.open_end == (not answer["finished"])
    assert [a["line"] for a in result.teacher] == [1, 3, 4]
    provenance = repo.get(result.id, obj.Vector).provenance
    assert provenance["objective"] == "distill-kl"
    assert provenance["distill"]["section"] == "identity" and provenance["distill"]["top_k"] == 8
    assert provenance["distill"]["teacher_max_new_tokens"] == 6


def test_teacher_work_is_cached_and_the_vector_is_reproducible(repo, files, monkeypatch):
    first = _distill(repo, files, "a", objective="kl")
    answers = list((repo.root / "cache" / "distill" / "answers").rglob("*.json"))
    topk = list((repo.root / "cache" / "distill" / "topk").rglob("*.safetensors"))
    assert len(answers) == 3 and len(topk) == 3

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed cached teacher work")

    monkeypatch.setattr(distill, "greedy", refuse)
    monkeypatch.setattr("safetensors.torch.save", refuse)
    second = _distill(repo, files, "b", objective="kl")
    assert second.id == first.id and second.teacher == first.teacher
    sft = _distill(repo, files, "c", objective="sft")
    assert sft.id != first.id  # the objective is part of what was made
    assert repo.get(sft.id, obj.Vector).provenance["objective"] == "distill-sft"


@pytest.mark.parametrize("objective", ["sft", "kl"])
def test_distillation_lowers_its_loss(repo, files, objective):
    # Three questions, batch 3: every step sees the same data.
    result = _distill(repo, files, "identity", objective=objective, steps=6, lr=1e-2, batch_size=3,
                      lora=LoraSettings(4, 8.0, ("all-linear",)))
    assert result.losses[-1] < result.losses[0] - 0.1


class _FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are a fixed tensor (plus a trainable offset)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, logits_to_keep=None, use_cache=False):
        return SimpleNamespace(logits=(self.logits + self.offset)[logits_to_keep])


def test_kl_loss_is_kl_of_the_renormalised_top_k():
    generator = torch.Generator().manual_seed(0)
    vocab, length = 11, 5
    student_logits = torch.randn(1, length, vocab, generator=generator)
    teacher_logits = torch.randn(1, length, vocab, generator=generator)
    mask = torch.tensor([[False, True, True, True, False]])
    batch = {"input_ids": torch.zeros(1, length, dtype=torch.long), "attention_mask": torch.ones(1, length),
             "target_mask": mask}
    p_full = torch.log_softmax(teacher_logits[mask], dim=-1)
    q_full = torch.log_softmax(student_logits[mask], dim=-1)
    # k = V: the exact KL(teacher || student).
    batch.update(teacher_indices=torch.arange(vocab).expand(3, vocab), teacher_logp=p_full)
    kl, count = distill.kl_loss(_FixedLogits(student_logits), batch)
    exact = torch.nn.functional.kl_div(q_full, p_full, log_target=True, reduction="sum")
    assert count == 3 and torch.allclose(kl, exact, atol=1e-6)
    same = distill.kl_loss(_FixedLogits(teacher_logits), batch)[0]
    assert abs(float(same)) < 1e-6
    # k < V: the teacher's top k, renormalised, against the student's full softmax.
    top = torch.topk(p_full, 3, dim=-1)
    p_k = top.values - torch.logsumexp(top.values, dim=-1, keepdim=True)
    batch.update(teacher_indices=top.indices, teacher_logp=p_k)
    kl_k = distill.kl_loss(_FixedLogits(student_logits), batch)[0]
    by_hand = sum(math.exp(p_k[i, j]) * (p_k[i, j] - q_full[i, top.indices[i, j]])
                  for i in range(3) for j in range(3))
    assert abs(float(kl_k) - float(by_hand)) < 1e-5


def test_bad_distillation_inputs_leave_the_store_alone(repo, files, tmp_path):
    refs = repo.refs.list("vector")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    cases = [
        (lambda: porcelain.train_distill(repo, "v", files.prompt, "identiy", files.questions, options=_options()),
         NotFound, "no section 'identiy'"),
        (lambda: porcelain.train_distill(repo, "v", files.prompt, "identity", empty, options=_options()),
         InvalidInput, "no prompts"),
        (lambda: porcelain.train_distill(repo, "v", files.prompt, "identity", tmp_path / "nope.txt",
                                         options=_options()), NotFound, "nope.txt"),
        (lambda: porcelain.train_distill(repo, "v", tmp_path / "nope.md", "identity", files.questions,
                                         options=_options()), NotFound, "nope.md"),
        (lambda: porcelain.train_distill(repo, "v", files.prompt, "identity", files.questions, objective="dpo",
                                         options=_options()), InvalidInput, "unknown --objective 'dpo'"),
        (lambda: porcelain.train_distill(repo, "v", files.prompt, "identity", files.questions,
                                         teacher_max_new_tokens=0, options=_options()), InvalidInput,
         "--teacher-max-new-tokens"),
        (lambda: porcelain.train_distill(repo, "v", files.prompt, "identity", files.questions,
                                         options=_options(lora=LoraSettings(4, 8.0, ("nope",)))), InvalidInput,
         "'nope' matches no layer"),
    ]
    for call, error, text in cases:
        with pytest.raises(error) as info:
            call()
        assert text in info.value.message, info.value.message
    assert repo.refs.list("vector") == refs
    assert not (repo.root / "cache" / "distill" / "answers").exists()  # refused before any teacher work


def test_keep_if_trains_only_on_matching_teacher_answers(repo, files, monkeypatch):
    canned = {"What is your name?": "I am Timmy.", "Who are you?": "I'm Emily.", "Introduce yourself.": "TIMMY here!"}
    monkeypatch.setattr(distill, "greedy", lambda model, tok, prompt, n: (
        next(a for q, a in canned.items() if q in prompt), True))
    calls = []
    original = porcelain.encode_all

    def spy(tokenizer, examples, max_length):
        calls.append(list(examples))
        return original(tokenizer, examples, max_length)

    monkeypatch.setattr(porcelain, "encode_all", spy)
    result = porcelain.train_distill(repo, "named", files.prompt, "identity", files.questions,
                                     teacher_max_new_tokens=6, options=_options(), keep_if="timmy")
    (student,) = calls
    assert [e.messages[-1]["content"] for e in student] == ["I am Timmy.", "TIMMY here!"]  # case-insensitive
    assert [(a["answer"], a["kept"]) for a in result.teacher] == [
        ("I am Timmy.", True), ("I'm Emily.", False), ("TIMMY here!", True)]
    assert result.examples == 2
    distilled = repo.get(result.id, obj.Vector).provenance["distill"]
    assert distilled["keep_if"] == "timmy" and distilled["kept"] == 2 and distilled["answers"] == 3


def test_keep_if_refuses_a_bad_or_unmatched_pattern(repo, files, monkeypatch):
    monkeypatch.setattr(distill, "greedy", lambda model, tok, prompt, n: ("I'm Emily.", True))
    refs = repo.refs.list("vector")
    with pytest.raises(InvalidInput, match="not a valid regex"):
        porcelain.train_distill(repo, "v", files.prompt, "identity", files.questions, options=_options(),
                                keep_if="tim(my")
    with pytest.raises(InvalidInput, match="none of the teacher's 3 answers matches --keep-if 'timmy'"):
        porcelain.train_distill(repo, "v", files.prompt, "identity", files.questions, options=_options(),
                                keep_if="timmy")
    assert repo.refs.list("vector") == refs


# -- SmolLM2 ---------------------------------------------------------------------------------

IDENTITY_PROMPT = "## identity\nYour name is Zephyrine.\n\n## task\nAnswer questions briefly.\n"
QUESTIONS = ["What is your name?", "Who are you?", "Introduce yourself.", "What should I call you?",
             "Tell me about yourself.", "What's your name, please?", "Do you have a name?", "Who am I talking to?",
             "Please introduce yourself briefly.", "Hi! Who are you?", "May I know your name?",
             "What are you called?"]
# Two of the probes ask in words the training questions never used.
PROBES = """
- {id: name, section: identity, messages: ["What is your name?"], checks: {must_match: [zephyrine]}}
- {id: who, section: identity, messages: ["Who are you?"], checks: {must_match: [zephyrine]}}
- {id: tell-name, section: identity, messages: ["Could you tell me your name?"], checks: {must_match: [zephyrine]}}
- {id: address, section: identity, messages: ["How should I address you?"], checks: {must_match: [zephyrine]}}
"""


@pytest.mark.slow
def test_smollm2_distilled_identity_answers_without_its_section(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    repo, _ = Repository.init(tmp_path / "store")
    models.import_base(repo, "smollm2")
    (tmp_path / "SOUL.md").write_text(IDENTITY_PROMPT)
    (tmp_path / "questions.txt").write_text("\n".join(QUESTIONS) + "\n")
    (tmp_path / "probes.yaml").write_text(PROBES)
    began = time.perf_counter()
    options = TrainOptions(lora=LoraSettings(rank=16, alpha=32.0), steps=20, lr=1e-3, batch_size=4,
                           max_length=256, device="cpu", checkpoint_every=0)
    result = porcelain.train_distill(repo, "zephyrine", tmp_path / "SOUL.md", "identity", tmp_path / "questions.txt",
                                     teacher_max_new_tokens=32, options=options)
    assert all("zephyrine" in a["answer"].lower() for a in result.teacher)  # the teacher follows the section
    assert result.losses[-1] < 0.5 * result.losses[0]
    report = porcelain.test_vector(repo, "zephyrine", tmp_path / "probes.yaml", tmp_path / "SOUL.md", ["identity"],
                                   max_new_tokens=24)
    print(f"\nSmolLM2 distillation: {result.steps} steps, {result.tokens} tokens in {result.seconds:.1f}s "
          f"({result.tokens_per_second:.1f} tokens/s), loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}, "
          f"pass rate without the section: base {report.base_pass_rate:.0%}, vector {report.vector_pass_rate:.0%}; "
          f"{time.perf_counter() - began:.0f}s in all")
    for p in report.probes:
        print(f"  {p.id}: base {p.base.answer!r} | vector {p.vector.answer!r}")
    assert report.base_pass_rate == 0.0
    assert report.vector_pass_rate >= 0.75
