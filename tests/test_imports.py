"""base import / vector import on the tiny random model, checked against peft and the files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from persona.errors import Conflict, Incompatible, InvalidInput, NotFound, UnsafeInput
from persona.porcelain import models
from persona.repo import Repository
from persona.store import objects as obj
from persona.store.tensors import load_tensor


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


@pytest.fixture
def repo(tmp_path):
    repo, _ = Repository.init(tmp_path / "store")
    return repo


@pytest.fixture
def based(repo, tiny_model_dir):
    models.import_base(repo, str(tiny_model_dir), name="tiny")
    return repo


def test_base_import_stores_every_tensor_bit_exact(based, tiny_model_dir):
    info = models.show_base(based, "tiny")
    base = based.get(info.id, obj.Base)
    tree = based.get(base.weights, obj.Tree)
    weights = _weights(tiny_model_dir)
    expected = {n for n in weights if not (base.tie_word_embeddings and n == "lm_head.weight")}
    assert set(tree.entries) == expected
    for name in expected:
        assert torch.equal(load_tensor(based.objects, tree.entries[name].blob), weights[name]), name
    assert "config.json" in base.files and "tokenizer.json" in base.files
    assert json.loads(based.get_file(base.files["config.json"]))["num_hidden_layers"] == 2
    assert info.parameters == sum(weights[n].numel() for n in expected)


def test_reimport_same_model_under_new_name_stores_nothing_new(based, tiny_model_dir):
    before = set(based.objects.iter_ids())
    models.import_base(based, str(tiny_model_dir), name="tiny2")
    after = set(based.objects.iter_ids())
    assert after == before  # same tensors, same files, same base object


def test_base_name_taken(based, tiny_model_dir):
    with pytest.raises(Conflict):
        models.import_base(based, str(tiny_model_dir), name="tiny")


def test_missing_source(repo, tmp_path):
    with pytest.raises(NotFound):
        models.import_base(repo, str(tmp_path / "nope"))
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(InvalidInput):
        models.import_base(repo, str(tmp_path / "weights.txt"))


def test_pickle_checkpoint_refused_and_store_untouched(repo, tmp_path, tiny_model_dir):
    model = tmp_path / "pickled"
    model.mkdir()
    (model / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    torch.save(_weights(tiny_model_dir), model / "pytorch_model.bin")
    before = set(repo.objects.iter_ids())
    with pytest.raises(UnsafeInput):
        models.import_base(repo, str(model))
    assert set(repo.objects.iter_ids()) == before
    assert repo.refs.list("base") == {}


def test_lora_adapter_roundtrip_is_exact(based, tiny_lora_adapter):
    adapter_dir, expected = tiny_lora_adapter
    info = models.import_adapter(based, "listening", adapter_dir)
    vector = based.get(info.id, obj.Vector)
    assert vector.vector_kind == "lora" and vector.base == models.show_base(based, "tiny").id
    assert set(vector.factors) == set(expected)
    for name, delta in expected.items():
        f = vector.factors[name]
        a = load_tensor(based.objects, f.A).to(torch.float64)
        b = load_tensor(based.objects, f.B).to(torch.float64)
        ours = f.scale * (b @ a)
        assert torch.allclose(ours, delta.to(torch.float64), atol=1e-6, rtol=1e-5), name
    # the store keeps the factors, not a dense delta
    assert info.parameters < sum(d.numel() for d in expected.values())


def test_rslora_scale(based, tiny_lora_adapter_rslora):
    adapter_dir, expected = tiny_lora_adapter_rslora
    info = models.import_adapter(based, "rs", adapter_dir)
    vector = based.get(info.id, obj.Vector)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["use_rslora"] is True
    for f in vector.factors.values():
        assert f.scale == pytest.approx(config["lora_alpha"] / math.sqrt(config["r"]))
    for name, delta in expected.items():
        f = vector.factors[name]
        ours = f.scale * (load_tensor(based.objects, f.B).double() @ load_tensor(based.objects, f.A).double())
        assert torch.allclose(ours, delta.double(), atol=1e-6, rtol=1e-5)


def test_adapter_against_other_base_shape_is_refused(repo, tiny_lora_adapter, tmp_path, tiny_model_dir):
    import shutil

    from safetensors.torch import save_file

    wide = tmp_path / "wide"
    wide.mkdir()
    for f in tiny_model_dir.iterdir():
        if not f.name.endswith(".safetensors") and not f.name.endswith(".index.json"):
            shutil.copy(f, wide / f.name)
    weights = {n: (torch.zeros(t.shape[0], t.shape[1] * 2) if n.endswith("q_proj.weight") else t)
               for n, t in _weights(tiny_model_dir).items()}
    save_file(weights, wide / "model.safetensors", metadata={"format": "pt"})
    models.import_base(repo, str(wide), name="wide")
    before = set(repo.objects.iter_ids())
    with pytest.raises(Incompatible):
        models.import_adapter(repo, "listening", tiny_lora_adapter[0])
    assert set(repo.objects.iter_ids()) == before and repo.refs.list("vector") == {}


def test_checkpoint_vector_stores_only_changed_tensors(based, tiny_finetuned_dir, tiny_model_dir):
    info = models.import_checkpoint(based, "tuned", tiny_finetuned_dir)
    vector = based.get(info.id, obj.Vector)
    ft, base = _weights(tiny_finetuned_dir), _weights(tiny_model_dir)
    changed = {n for n in base if not torch.equal(ft[n], base[n])}
    assert set(vector.finetuned) == changed and 0 < len(changed) < len(base) and not vector.deltas
    for name in changed:  # W_ft is stored as is, in its own dtype; the merge forms W_ft - W_base
        stored = load_tensor(based.objects, vector.finetuned[name])
        assert stored.dtype == ft[name].dtype and torch.equal(stored, ft[name])


def test_checkpoint_low_rank_reports_error(based, tiny_finetuned_dir, tiny_model_dir):
    info = models.import_checkpoint(based, "tuned_r2", tiny_finetuned_dir, rank=2)
    vector = based.get(info.id, obj.Vector)
    assert info.svd_errors and set(info.svd_errors) == set(vector.factors)
    ft, base = _weights(tiny_finetuned_dir), _weights(tiny_model_dir)
    for name, error in info.svd_errors.items():
        delta = ft[name].double() - base[name].double()
        f = vector.factors[name]
        approx = load_tensor(based.objects, f.B).double() @ load_tensor(based.objects, f.A).double()
        assert error == pytest.approx(float(torch.linalg.norm(delta - approx) / torch.linalg.norm(delta)),
                                      rel=1e-3, abs=1e-5)
        # Eckart-Young: the error is the tail of the singular values
        s = torch.linalg.svdvals(delta)
        assert error == pytest.approx(float(s[2:].norm() / s.norm()), rel=1e-3, abs=1e-5)


def test_checkpoint_identical_to_base_refused(based, tiny_model_dir):
    with pytest.raises(InvalidInput, match="identical"):
        models.import_checkpoint(based, "same", tiny_model_dir)


def test_checkpoint_with_nan_refused(based, tiny_model_dir, tmp_path):
    import shutil

    from safetensors.torch import save_file

    bad = tmp_path / "nan"
    shutil.copytree(tiny_model_dir, bad)
    shard = sorted(bad.glob("*.safetensors"))[0]
    weights = load_file(shard)
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, shard, metadata={"format": "pt"})
    with pytest.raises(InvalidInput, match="NaN"):
        models.import_checkpoint(based, "nan", bad)
    assert "nan" not in based.refs.list("vector")


def test_vector_needs_a_base(repo, tiny_lora_adapter):
    with pytest.raises(NotFound, match="no base"):
        models.import_adapter(repo, "x", tiny_lora_adapter[0])


def test_two_bases_need_base_flag(based, tiny_model_dir_b, tiny_lora_adapter):
    models.import_base(based, str(tiny_model_dir_b), name="other")
    with pytest.raises(InvalidInput, match="2 bases"):
        models.import_adapter(based, "x", tiny_lora_adapter[0])
    info = models.import_adapter(based, "x", tiny_lora_adapter[0], base="tiny")
    assert info.base == models.show_base(based, "tiny").id
