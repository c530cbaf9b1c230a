"""PEFT LoRA adapters: exact factors, scaling rules, refusals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from persona.errors import InvalidInput, NotFound, UnsafeInput
from persona.tensorio.peft_reader import LoraFactor, match_pattern, read_lora_adapter
from tests.fixtures.tiny import make_peft_lora_adapter

ATOL = 1e-6


def assert_same_deltas(adapter_dir: Path, expected: dict[str, torch.Tensor]) -> None:
    adapter = read_lora_adapter(adapter_dir)
    assert set(adapter.factors) == set(expected)
    for name, factor in adapter.factors.items():
        got = factor.delta()
        assert got.shape == expected[name].shape, name
        torch.testing.assert_close(got, expected[name], atol=ATOL, rtol=0)


def test_plain_lora_matches_peft_merge(tiny_lora_adapter: tuple[Path, dict]) -> None:
    adapter_dir, expected = tiny_lora_adapter
    assert_same_deltas(adapter_dir, expected)
    adapter = read_lora_adapter(adapter_dir)
    f = adapter.factors["model.layers.0.self_attn.q_proj.weight"]
    assert f.scale == 8 / 4 and f.rank == 4
    assert tuple(f.A.shape) == (4, 64) and tuple(f.B.shape) == (64, 4)
    assert tuple(adapter.factors["model.layers.1.self_attn.v_proj.weight"].B.shape) == (32, 4)
    assert adapter.base_model_name_or_path
    assert adapter.config["peft_type"] == "LORA"


def test_rslora_matches_peft_merge(tiny_lora_adapter_rslora: tuple[Path, dict]) -> None:
    adapter_dir, expected = tiny_lora_adapter_rslora
    assert_same_deltas(adapter_dir, expected)
    f = next(iter(read_lora_adapter(adapter_dir).factors.values()))
    assert f.scale == pytest.approx(8 / math.sqrt(4))


def test_rank_and_alpha_patterns(tmp_path: Path, tiny_model_dir: Path) -> None:
    adapter_dir, expected = make_peft_lora_adapter(
        tiny_model_dir,
        tmp_path / "patterns",
        seed=4,
        target_modules=("q_proj", "v_proj", "down_proj"),
        rank_pattern={"layers.1.self_attn.q_proj": 2, "down_proj": 8},
        alpha_pattern={"v_proj": 3},
    )
    assert_same_deltas(adapter_dir, expected)
    factors = read_lora_adapter(adapter_dir).factors
    assert factors["model.layers.1.self_attn.q_proj.weight"].rank == 2
    assert factors["model.layers.0.self_attn.q_proj.weight"].rank == 4
    assert factors["model.layers.0.mlp.down_proj.weight"].scale == 8 / 8
    assert factors["model.layers.1.self_attn.v_proj.weight"].scale == 3 / 4


def test_embedding_lora_is_mapped_exactly(tmp_path: Path, tiny_model_dir: Path) -> None:
    adapter_dir, expected = make_peft_lora_adapter(
        tiny_model_dir, tmp_path / "emb", seed=5, target_modules=("embed_tokens", "o_proj")
    )
    assert "model.embed_tokens.weight" in expected
    assert_same_deltas(adapter_dir, expected)
    adapter = read_lora_adapter(adapter_dir)
    emb = adapter.factors["model.embed_tokens.weight"]
    assert tuple(emb.B.shape)[0] == 400 and tuple(emb.A.shape)[1] == 64
    # PEFT also saves the frozen embedding it wrapped; we say so instead of importing it
    assert any("base_layer" in w for w in adapter.warnings)


def test_fan_in_fan_out_is_transposed(tmp_path: Path, tiny_lora_adapter: tuple[Path, dict]) -> None:
    src, _ = tiny_lora_adapter
    d = shutil.copytree(src, tmp_path / "fifo")
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["fan_in_fan_out"] = True
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    plain = read_lora_adapter(src).factors
    flipped = read_lora_adapter(d).factors
    for name, f in plain.items():
        torch.testing.assert_close(flipped[name].delta(), f.delta().T)


def edit_config(src: Path, dst: Path, **changes: object) -> Path:
    d = shutil.copytree(src, dst)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(changes)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"use_dora": True}, "use_dora"),
        ({"peft_type": "IA3"}, "not LoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "all"}, "bias"),
        ({"lora_bias": True}, "lora_bias"),
        ({"r": 0}, "r must be"),
        ({"r": 8}, "rank 4"),
    ],
)
def test_unsupported_adapters_refused(
    tmp_path: Path, tiny_lora_adapter: tuple[Path, dict], changes: dict, needle: str
) -> None:
    d = edit_config(tiny_lora_adapter[0], tmp_path / "x", **changes)
    with pytest.raises(InvalidInput) as err:
        read_lora_adapter(d)
    assert needle in err.value.message
    assert err.value.hint


def test_full_weights_in_adapter_refused(tmp_path: Path, tiny_lora_adapter: tuple[Path, dict]) -> None:
    d = shutil.copytree(tiny_lora_adapter[0], tmp_path / "extra")
    sd = load_file(str(d / "adapter_model.safetensors"))
    sd["base_model.model.lm_head.weight"] = torch.zeros(400, 64)
    save_file(sd, str(d / "adapter_model.safetensors"))
    with pytest.raises(InvalidInput, match="not a LoRA factor"):
        read_lora_adapter(d)


def test_missing_half_of_a_pair(tmp_path: Path, tiny_lora_adapter: tuple[Path, dict]) -> None:
    d = shutil.copytree(tiny_lora_adapter[0], tmp_path / "half")
    sd = load_file(str(d / "adapter_model.safetensors"))
    del sd["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    save_file(sd, str(d / "adapter_model.safetensors"))
    with pytest.raises(InvalidInput, match="q_proj"):
        read_lora_adapter(d)


def test_pickle_adapter(tmp_path: Path, tiny_lora_adapter: tuple[Path, dict]) -> None:
    src, expected = tiny_lora_adapter
    d = shutil.copytree(src, tmp_path / "pkl")
    sd = load_file(str(d / "adapter_model.safetensors"))
    (d / "adapter_model.safetensors").unlink()
    torch.save(sd, d / "adapter_model.bin")
    with pytest.raises(UnsafeInput, match="pickle"):
        read_lora_adapter(d)
    adapter = read_lora_adapter(d, allow_pickle=True)
    for name, f in adapter.factors.items():
        torch.testing.assert_close(f.delta(), expected[name], atol=ATOL, rtol=0)


def test_not_an_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(NotFound):
        read_lora_adapter(tmp_path / "absent")
    with pytest.raises(InvalidInput, match="adapter_config.json"):
        read_lora_adapter(tiny_model_dir)


def test_match_pattern_follows_peft() -> None:
    patterns = {"q_proj": 1, "layers.1.self_attn.v_proj": 2}
    assert match_pattern(patterns, "model.layers.0.self_attn.q_proj") == "q_proj"
    assert match_pattern(patterns, "model.layers.1.self_attn.v_proj") == "layers.1.self_attn.v_proj"
    assert match_pattern(patterns, "model.layers.11.self_attn.v_proj") is None
    assert match_pattern(patterns, "model.layers.0.self_attn.xq_proj") is None
    assert match_pattern({}, "anything") is None


def test_lora_factor_delta_dtype() -> None:
    f = LoraFactor(A=torch.ones(2, 3, dtype=torch.bfloat16), B=torch.ones(4, 2, dtype=torch.bfloat16), scale=0.5)
    d = f.delta()
    assert d.dtype == torch.float32 and d.shape == (4, 3) and torch.all(d == 1.0)
    assert f.delta(torch.float16).dtype == torch.float16
