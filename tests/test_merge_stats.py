"""Weight-level diff statistics, hand-computed."""

from __future__ import annotations

import math

import pytest
import torch

from persona.errors import Incompatible
from persona.merge import DiffStats, Workspace
from persona.merge.stats import diff_tensor, layer_of


def test_one_pair_by_hand():
    # a = [1, -1, 0, 2], b = [1, 1, 3, 0]
    # <a, b> = 1 - 1 + 0 + 0 = 0 -> cosine 0
    # both nonzero at 0 and 1; signs differ at 1 -> conflict rate 1/4, over the overlap 1/2
    # b - a = [0, 2, 3, -2] -> ||.|| = sqrt(17)
    g = diff_tensor(
        torch.tensor([1.0, -1.0, 0.0, 2.0]), torch.tensor([1.0, 1.0, 3.0, 0.0]), Workspace()
    )
    assert g.cosine == 0.0
    assert g.sign_conflict_rate == 0.25 and g.overlap_conflict_rate == 0.5
    assert g.l2_change == pytest.approx(math.sqrt(17))
    assert g.norm_a == pytest.approx(math.sqrt(6)) and g.norm_b == pytest.approx(math.sqrt(11))


def test_layers_are_grouped_and_totals_add_up():
    stats = DiffStats(Workspace(3))  # small chunks: sums must not depend on them
    a0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    stats.observe("model.layers.0.self_attn.q_proj.weight", a0, 2 * a0)  # cosine 1
    stats.observe("model.layers.0.mlp.up_proj.weight", torch.ones(3), -torch.ones(3))  # cosine -1
    stats.observe("model.layers.1.mlp.up_proj.weight", torch.ones(2), None)  # b untouched: zeros
    stats.observe("model.embed_tokens.weight", None, torch.ones(5))
    s = stats.summary()
    layers = {row["layer"]: row for row in s["layers"]}
    assert [row["layer"] for row in s["layers"]] == [0, 1, None]
    # layer 0: ||a||^2 = 30 + 3, ||b||^2 = 120 + 3, <a, b> = 60 - 3
    assert layers[0]["cosine"] == pytest.approx(57 / math.sqrt(33 * 123))
    assert layers[0]["sign_conflict_rate"] == pytest.approx(3 / 7)
    assert layers[1]["cosine"] is None and layers[1]["l2_change"] == pytest.approx(math.sqrt(2))
    assert layers[None]["l2_change"] == pytest.approx(math.sqrt(5))
    assert s["total"]["numel"] == 4 + 3 + 2 + 5 and s["total"]["tensors"] == 4
    assert s["total"]["l2_change"] ** 2 == pytest.approx(30 + 12 + 2 + 5)


def test_layer_names():
    assert layer_of("model.layers.12.mlp.down_proj.weight") == 12
    assert layer_of("transformer.h.3.attn.c_attn.weight") == 3
    assert layer_of("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") == 0
    assert layer_of("model.norm.weight") is None
    assert layer_of("lm_head.weight") is None


def test_shape_mismatch_is_refused():
    with pytest.raises(Incompatible):
        diff_tensor(torch.ones(2, 3), torch.ones(3, 2), Workspace())


def test_bf16_inputs_and_chunk_independence():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    one = diff_tensor(a.bfloat16(), b.bfloat16(), Workspace(7)).summary()
    two = diff_tensor(a.bfloat16(), b.bfloat16(), Workspace()).summary()
    for key, value in one.items():
        assert value == pytest.approx(two[key], rel=1e-12)
