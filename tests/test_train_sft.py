"""LoRA training on the tiny model: loss goes down, factors are exactly peft's, ids are
reproducible, interrupted runs resume to the same vector, and bad input leaves the store alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from persona.db.models import TrainingRunRow
from persona.errors import Conflict, Interrupted, InvalidInput, NotFound, PersonaError
from persona.porcelain import models
from persona.porcelain.materialise import load_causal_lm
from persona.repo import Repository
from persona.store import objects as obj
from persona.store.tensors import load_tensor
from persona.train import loop, lora, porcelain
from persona.train.lora import LoraSettings
from persona.train.porcelain import TrainOptions

QA = [
    ("I had a rough day.", "That sounds hard. What happened?"),
    ("My cat is sick.", "I am sorry. How is your cat today?"),
    ("I got the job!", "Thank you for sharing that with me. How does it feel?"),
    ("I miss my friends.", "It sounds like they matter to you. What do you miss?"),
    ("I cannot sleep.", "That sounds difficult. How long has it been?"),
    ("Work is busy.", "I am here to listen. What is taking your time?"),
]


@pytest.fixture
def repo(tmp_path, tiny_model_dir) -> Repository:
    repo, _ = Repository.init(tmp_path / "store")
    models.import_base(repo, str(tiny_model_dir), name="tiny")
    return repo


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "listening.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in QA))
    return path


def _options(**overrides) -> TrainOptions:
    settings = {"lora": LoraSettings(rank=4, alpha=8.0), "steps": 4, "lr": 5e-3, "batch_size": 3,
                "max_length": 64, "device": "cpu", "checkpoint_every": 0}
    settings.update(overrides)
    return TrainOptions(**settings)


def _runs(repo: Repository) -> list[TrainingRunRow]:
    from sqlalchemy import select

    return repo.db.read(lambda s: list(s.execute(select(TrainingRunRow).order_by(TrainingRunRow.id)).scalars()))


def _snapshot(repo: Repository) -> tuple[dict, int]:
    objects = sum(1 for p in (repo.root / "objects").rglob("*") if p.is_file())
    return {ns: repo.refs.list(ns) for ns in ("vector", "base", "branch", "tag")}, objects


def test_training_lowers_the_loss_and_records_the_run(repo, data):
    # One batch holding every example, so each step sees the same data and the loss must fall.
    result = porcelain.train_sft(repo, "listening", data, options=_options(steps=8, lr=2e-2, batch_size=6,
                                                                            lora=LoraSettings(4, 8.0, ("all-linear",))))
    assert result.steps == 8 and len(result.losses) == 8
    assert result.losses[-1] < result.losses[0] - 0.2
    info = models.show_vector(repo, "listening")
    assert info.kind == "lora" and info.base == repo.base_id("tiny")
    assert info.tensors == 2 * 7  # every linear layer of both blocks, not the lm_head
    assert info.provenance["hyperparameters"]["steps"] == 8
    assert info.provenance["data_sha256"] == result.vector.training["data_sha256"]
    assert info.training["status"] == "completed" and info.training["losses"] == result.losses
    assert info.training["versions"]["torch"] == torch.__version__
    assert result.tokens > 0 and result.tokens_per_second > 0
    assert not any((repo.root / "cache" / "train").iterdir())  # the checkpoint folder is gone


def test_stored_factors_are_the_trained_peft_weights(repo, data, monkeypatch):
    seen = {}
    original = lora.extract

    def spy(peft_model, adapter="default"):
        seen["model"] = peft_model
        return original(peft_model, adapter)

    monkeypatch.setattr(lora, "extract", spy)
    result = porcelain.train_sft(repo, "listening", data, options=_options())
    peft_model = seen["model"]
    vector = repo.get(result.id, obj.Vector)
    modules = dict(peft_model.get_base_model().named_modules())
    assert len(vector.factors) == 4  # q_proj and v_proj of two layers
    for tensor_name, factor in vector.factors.items():
        module = modules[tensor_name.removesuffix(".weight")]
        assert torch.equal(load_tensor(repo.objects, factor.A), module.lora_A["default"].weight.detach())
        assert torch.equal(load_tensor(repo.objects, factor.B), module.lora_B["default"].weight.detach())
        assert factor.scale == module.scaling["default"] == 2.0
        assert bool(load_tensor(repo.objects, factor.B).abs().sum() > 0)  # B moved away from its zero init
    # The dense delta they describe is peft's own merge.
    tree = repo.get(repo.get(vector.base, obj.Base).weights, obj.Tree)
    base = {n: load_tensor(repo.objects, e.blob).clone() for n, e in tree.entries.items()}
    merged = peft_model.merge_and_unload().state_dict()
    for tensor_name, factor in vector.factors.items():
        delta = factor.scale * (load_tensor(repo.objects, factor.B) @ load_tensor(repo.objects, factor.A))
        torch.testing.assert_close(base[tensor_name] + delta, merged[tensor_name], rtol=0, atol=1e-6)
    # And applying the vector in memory (vector test) gives the merged model.
    from persona.train.probe_test import apply_vector

    model, _ = load_causal_lm(repo, vector.base)
    assert sorted(apply_vector(model, repo, vector)) == sorted(vector.factors)
    for name, param in model.state_dict().items():
        torch.testing.assert_close(param, merged[name], rtol=0, atol=1e-6)


def test_same_data_and_seed_give_the_same_vector_id(repo, data):
    first = porcelain.train_sft(repo, "a", data, options=_options())
    second = porcelain.train_sft(repo, "b", data, options=_options())
    assert first.id == second.id
    assert porcelain.train_sft(repo, "c", data, options=_options(seed=1)).id != first.id
    assert porcelain.train_sft(repo, "d", data, options=_options(lr=1e-3)).id != first.id
    assert len([r for r in _runs(repo) if r.vector_id == first.id]) == 2


def _interrupt_at(step: int):
    def progress(event):
        if event.phase == "train" and event.done == step:
            raise KeyboardInterrupt

    return progress


def test_interrupt_keeps_nothing_and_resume_reaches_the_same_vector(repo, data):
    straight = porcelain.train_sft(repo, "straight", data, options=_options(steps=6))
    before = _snapshot(repo)
    with pytest.raises(Interrupted) as info:
        porcelain.train_sft(repo, "resumed", data, options=_options(steps=6), progress=_interrupt_at(3))
    assert "--resume" in info.value.hint and "step 3" in info.value.hint
    assert repo.refs.list("vector") == before[0]["vector"]
    last = _runs(repo)[-1]
    assert last.status == "interrupted" and last.vector_id is None and len(last.losses) == 3
    resumed = porcelain.train_sft(repo, "resumed", data, options=_options(steps=6, resume=True))
    assert resumed.resumed_from == 3 and resumed.id == straight.id
    assert resumed.losses[:3] == last.losses
    assert not any((repo.root / "cache" / "train").iterdir())


def test_interrupt_inside_the_optimizer_step_falls_back_to_the_periodic_checkpoint(repo, data, monkeypatch):
    straight = porcelain.train_sft(repo, "straight", data, options=_options(steps=5, checkpoint_every=2))
    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the optimizer step of step 4: the weights may be half-updated
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", flaky)
    with pytest.raises(Interrupted) as info:
        porcelain.train_sft(repo, "resumed", data, options=_options(steps=5, checkpoint_every=2))
    assert "step 2" in info.value.hint
    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    resumed = porcelain.train_sft(repo, "resumed", data, options=_options(steps=5, checkpoint_every=2, resume=True))
    assert resumed.resumed_from == 2 and resumed.id == straight.id


def test_resume_without_a_checkpoint_starts_over(repo, data):
    result = porcelain.train_sft(repo, "x", data, options=_options(steps=2, resume=True))
    assert result.resumed_from is None and result.steps == 2


def test_batch_order_is_a_function_of_seed_and_step():
    seen = [loop.batch_at(step, 10, 4, seed=7) for step in range(6)]
    assert sorted(seen[0] + seen[1] + seen[2]) == list(range(10))  # epoch 0 covers every example once
    assert [len(b) for b in seen[:3]] == [4, 4, 2]
    assert seen[3:] != seen[:3] and sorted(seen[3] + seen[4] + seen[5]) == list(range(10))
    assert loop.batch_at(4, 10, 4, seed=7) == seen[4]
    assert loop.batch_at(0, 10, 4, seed=8) != seen[0]
    assert loop.total_steps(10, 4, None, None) == 3 and loop.total_steps(10, 4, 2.5, None) == 8
    assert loop.total_steps(10, 4, None, 11) == 11


# -- bad input: a PersonaError naming the problem, and an untouched store -------------------

def _bad(repo, tmp_path, data, case):
    if case == "bad-json":
        bad = tmp_path / "bad.jsonl"
        bad.write_text(data.read_text() + "{oops\n")
        return lambda: porcelain.train_sft(repo, "v", bad, options=_options()), InvalidInput, "bad.jsonl:7"
    if case == "unknown-role":
        bad = tmp_path / "role.jsonl"
        bad.write_text(json.dumps({"messages": [{"role": "coach", "content": "x"}]}) + "\n")
        return lambda: porcelain.train_sft(repo, "v", bad, options=_options()), InvalidInput, "unknown role 'coach'"
    if case == "empty":
        (tmp_path / "empty.jsonl").write_text("")
        return (lambda: porcelain.train_sft(repo, "v", tmp_path / "empty.jsonl", options=_options()),
                InvalidInput, "no examples")
    if case == "missing":
        return lambda: porcelain.train_sft(repo, "v", tmp_path / "nope.jsonl", options=_options()), NotFound, "nope"
    if case == "target-modules":
        options = _options(lora=LoraSettings(4, 8.0, ("qq_proj",)))
        return lambda: porcelain.train_sft(repo, "v", data, options=options), InvalidInput, "'qq_proj' matches no layer"
    if case == "not-linear":
        options = _options(lora=LoraSettings(4, 8.0, ("input_layernorm",)))
        return lambda: porcelain.train_sft(repo, "v", data, options=options), InvalidInput, "not a linear layer"
    if case == "rank":
        options = _options(lora=LoraSettings(rank=0))
        return lambda: porcelain.train_sft(repo, "v", data, options=options), InvalidInput, "--rank must be at least 1"
    if case == "steps-and-epochs":
        return (lambda: porcelain.train_sft(repo, "v", data, options=_options(epochs=1.0)), InvalidInput,
                "--epochs or --steps")
    if case == "name":
        return lambda: porcelain.train_sft(repo, "../x", data, options=_options()), InvalidInput, "path separator"
    if case == "base":
        return (lambda: porcelain.train_sft(repo, "v", data, base="nobase", options=_options()), NotFound,
                "nobase")
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["bad-json", "unknown-role", "empty", "missing", "target-modules", "not-linear",
                                  "rank", "steps-and-epochs", "name", "base"])
def test_bad_input_is_refused_and_the_store_is_untouched(repo, tmp_path, data, case):
    call, error, text = _bad(repo, tmp_path, data, case)
    before = _snapshot(repo)
    with pytest.raises(error) as info:
        call()
    assert text in info.value.message and info.value.hint
    assert _snapshot(repo) == before
    assert _runs(repo) == []


def test_a_taken_name_is_refused_before_training(repo, data, monkeypatch):
    porcelain.train_sft(repo, "listening", data, options=_options(steps=1))
    monkeypatch.setattr(porcelain, "_load_model", lambda run: pytest.fail("loaded a model for a taken name"))
    with pytest.raises(Conflict, match="already exists"):
        porcelain.train_sft(repo, "listening", data, options=_options(steps=2))


def test_a_diverging_run_is_recorded_as_failed(repo, data, monkeypatch):
    from persona.train import objectives

    calls = {"n": 0}
    original = objectives.sft_loss

    def exploding(model, batch):
        calls["n"] += 1
        loss, count = original(model, batch)
        return (loss * float("nan") if calls["n"] == 2 else loss), count

    monkeypatch.setattr(objectives, "sft_loss", exploding)
    with pytest.raises(PersonaError, match="loss became nan at step 2") as info:
        porcelain.train_sft(repo, "v", data, options=_options())
    assert "--lr" in info.value.hint
    assert repo.refs.list("vector") == {}
    assert _runs(repo)[-1].status == "failed"


def test_target_module_names(tmp_path):
    assert lora.parse_target_modules(" v_proj,q_proj,,q_proj ") == ("q_proj", "v_proj")
    for bad in ("", "q_proj,all-linear", "q-proj!"):
        with pytest.raises(InvalidInput):
            lora.parse_target_modules(bad)


def test_apollo_optimizer_trains_is_recorded_and_resumes_exactly(repo, data):
    pytest.importorskip("apollo_torch", reason="the [apollo] extra is part of the dev install")
    options = _options(steps=8, lr=2e-2, batch_size=6, optimizer="apollo", lora=LoraSettings(4, 8.0, ("all-linear",)))
    result = porcelain.train_sft(repo, "apollo", data, options=options)
    assert result.losses[-1] < result.losses[0] - 0.2
    assert models.show_vector(repo, "apollo").provenance["hyperparameters"]["optimizer"] == "apollo"
    adamw = porcelain.train_sft(repo, "adamw", data, options=_options(steps=8, lr=2e-2, batch_size=6,
                                                                      lora=LoraSettings(4, 8.0, ("all-linear",))))
    assert adamw.id != result.id and adamw.losses != result.losses
    # interrupted and resumed (the projector is rebuilt from its seed) it reaches the same vector
    with pytest.raises(Interrupted):
        porcelain.train_sft(repo, "apollo-2", data, options=_options(steps=6, optimizer="apollo",
                                                                     checkpoint_every=2), progress=_interrupt_at(3))
    resumed = porcelain.train_sft(repo, "apollo-2", data, options=_options(steps=6, optimizer="apollo",
                                                                           checkpoint_every=2, resume=True))
    straight = porcelain.train_sft(repo, "apollo-3", data, options=_options(steps=6, optimizer="apollo",
                                                                            checkpoint_every=2))
    assert resumed.resumed_from == 3 and resumed.id == straight.id


def test_apollo_without_its_package_is_one_line(repo, data, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_apollo(name, *args, **kwargs):
        if name.startswith("apollo_torch"):
            raise ImportError("No module named 'apollo_torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_apollo)
    before = _snapshot(repo)
    with pytest.raises(InvalidInput, match="--optimizer apollo needs the apollo-torch package") as info:
        porcelain.train_sft(repo, "v", data, options=_options(optimizer="apollo"))
    assert "persona[apollo]" in info.value.hint
    assert _snapshot(repo)[0] == before[0]
