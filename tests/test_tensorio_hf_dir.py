"""Reading Hugging Face model directories: weights, small files, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from persona.errors import InvalidInput, NotFound, UnsafeInput
from persona.tensorio.hf_dir import open_model_dir
from persona.tensorio.source import assert_finite


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_reads_tiny_model(tiny_model_dir: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    ref = load_file(str(tiny_model_dir / "model.safetensors"))
    assert src.architecture == "LlamaForCausalLM"
    assert src.tie_word_embeddings is False
    assert [t.name for t in src.tensors] == sorted(ref)
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(src.files)
    assert src.files["config.json"] == (tiny_model_dir / "config.json").read_bytes()
    assert src.config["num_hidden_layers"] == 2
    assert src.total_bytes == sum(t.numel() * t.element_size() for t in ref.values())
    names = []
    for name, tensor in src.iter_tensors():
        assert torch.equal(tensor, ref[name])
        names.append(name)
    assert names == sorted(ref)
    assert torch.equal(src.tensor("model.norm.weight"), ref["model.norm.weight"])
    with pytest.raises(NotFound):
        src.tensor("no.such.weight")


def test_sharded_checkpoint(tiny_finetuned_dir: Path, tiny_model_dir: Path) -> None:
    shards = sorted(tiny_finetuned_dir.glob("model-*.safetensors"))
    assert len(shards) >= 2
    ft = open_model_dir(tiny_finetuned_dir)
    base = open_model_dir(tiny_model_dir)
    assert [t.name for t in ft.tensors] == [t.name for t in base.tensors]
    changed = {n for (n, a), (_, b) in zip(ft.iter_tensors(), base.iter_tensors(), strict=True) if not torch.equal(a, b)}
    assert changed == {
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
    }


def test_tied_model_does_not_list_lm_head(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    from tests.fixtures.tiny import make_tiny_llama_dir

    d = make_tiny_llama_dir(tmp_path / "tied", seed=5, tie_word_embeddings=True, tokenizer_dir=tiny_tokenizer_dir)
    src = open_model_dir(d)
    assert src.tie_word_embeddings is True
    assert "lm_head.weight" not in {t.name for t in src.tensors}


def test_missing_config_and_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(NotFound):
        open_model_dir(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="config.json"):
        open_model_dir(tmp_path / "empty")
    d = copy_model(tiny_model_dir, tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(NotFound, match="no weights"):
        open_model_dir(d)


def test_bad_config_json(tmp_path: Path, tiny_model_dir: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        open_model_dir(d)


def test_quantized_checkpoint_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidInput, match="quantized"):
        open_model_dir(d)


def test_index_naming_a_missing_shard(tmp_path: Path, tiny_finetuned_dir: Path) -> None:
    d = copy_model(tiny_finetuned_dir, tmp_path / "m")
    sorted(d.glob("model-*.safetensors"))[-1].unlink()
    with pytest.raises(NotFound, match="missing"):
        open_model_dir(d)


def test_index_disagreeing_with_shards(tmp_path: Path, tiny_finetuned_dir: Path) -> None:
    d = copy_model(tiny_finetuned_dir, tmp_path / "m")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    wm = index["weight_map"]
    first, second = sorted(set(wm.values()))[:2]
    name = next(n for n, s in wm.items() if s == first)
    wm[name] = second
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInput, match=name):
        open_model_dir(d)


def test_index_with_path_traversal(tmp_path: Path, tiny_finetuned_dir: Path) -> None:
    d = copy_model(tiny_finetuned_dir, tmp_path / "m")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "../evil.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInput, match="plain file name"):
        open_model_dir(d)


def pickle_model(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, dict]:
    d = copy_model(tiny_model_dir, tmp_path / "pkl")
    sd = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    torch.save(sd, d / "pytorch_model.bin")
    return d, sd


def test_pickle_refused_by_default(tmp_path: Path, tiny_model_dir: Path) -> None:
    d, _ = pickle_model(tmp_path, tiny_model_dir)
    with pytest.raises(UnsafeInput) as err:
        open_model_dir(d)
    assert "pickle checkpoints can execute code" in err.value.message
    assert "--allow-pickle" in err.value.hint


def test_pickle_allowed_loads_weights_only(tmp_path: Path, tiny_model_dir: Path) -> None:
    d, sd = pickle_model(tmp_path, tiny_model_dir)
    src = open_model_dir(d, allow_pickle=True)
    got = dict(src.iter_tensors())
    assert set(got) == set(sd)
    assert all(torch.equal(got[n], sd[n]) for n in sd)


def test_training_leftovers_are_not_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    d, sd = pickle_model(tmp_path, tiny_model_dir)
    marker = tmp_path / "pwned"

    class Touch:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"args": Touch()}, d / "training_args.bin")
    torch.save({"state": torch.zeros(1)}, d / "optimizer.pt")
    src = open_model_dir(d, allow_pickle=True)
    assert {t.name for t in src.tensors} == set(sd)
    assert not marker.exists()


def test_sharded_pickle_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    d, sd = pickle_model(tmp_path, tiny_model_dir)
    (d / "pytorch_model.bin").unlink()
    names = sorted(sd)
    half = len(names) // 2
    parts = {"pytorch_model-00001-of-00002.bin": names[:half], "pytorch_model-00002-of-00002.bin": names[half:]}
    for shard, keys in parts.items():
        torch.save({k: sd[k] for k in keys}, d / shard)
    weight_map = {k: shard for shard, keys in parts.items() for k in keys}
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UnsafeInput):
        open_model_dir(d)
    got = dict(open_model_dir(d, allow_pickle=True).iter_tensors())
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


def test_adapter_dir_gets_a_pointed_hint(tiny_lora_adapter: tuple[Path, dict]) -> None:
    with pytest.raises(InvalidInput) as err:
        open_model_dir(tiny_lora_adapter[0])
    assert "adapter" in err.value.message and "vector import" in err.value.hint


def test_pickle_with_code_refused_even_when_allowed(tmp_path: Path, tiny_model_dir: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "evil")
    (d / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Touch:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model.norm.weight": torch.zeros(2), "x": Touch()}, d / "pytorch_model.bin")
    with pytest.raises(UnsafeInput, match="refusing to unpickle"):
        open_model_dir(d, allow_pickle=True)
    assert not marker.exists()


def test_remote_code_is_never_executed(tmp_path: Path, tiny_model_dir: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "remote")
    marker = tmp_path / "remote-code-ran"
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    (d / "configuration_evil.py").write_text(code)
    (d / "modeling_evil.py").write_text(code)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
    }
    (d / "config.json").write_text(json.dumps(cfg))
    src = open_model_dir(d)
    for _ in src.iter_tensors():
        pass
    assert not marker.exists()
    assert any("remote code" in w and "not executed" in w for w in src.warnings)
    assert not any(name.endswith(".py") for name in src.files)


def test_nan_weights_refused_as_they_stream(tmp_path: Path, tiny_model_dir: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "nan")
    sd = load_file(str(d / "model.safetensors"))
    sd["model.layers.1.mlp.up_proj.weight"][3, 7] = float("nan")
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    src = open_model_dir(d)  # opening is cheap and does not read data
    with pytest.raises(InvalidInput, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*NaN"):
        for _ in src.iter_tensors():
            pass


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_assert_finite(bad: float, dtype: torch.dtype) -> None:
    t = torch.randn(1000).to(dtype)
    assert_finite("ok", t)
    t[500] = bad
    with pytest.raises(InvalidInput, match="w.q"):
        assert_finite("w.q", t)
    assert_finite("ints", torch.arange(5))
