"""A checkpoint vector stored as W_ft (``DiffTerm``) merges exactly like its float32 delta.

The difference of two bf16 numbers is exact in float32, so every method must give
bit-identical results whether the vector is given as ``W_ft - W_base`` (a
``DenseTerm``) or as ``W_ft`` with the base (a ``DiffTerm``), whatever the chunking.
"""

from __future__ import annotations

import pytest
import torch

from persona.errors import Incompatible
from persona.merge import DenseTerm, DiffTerm, LowRankTerm, MergeParams, Workspace, merge_tensor
from persona.store import objects as obj


def _checkpoints(seed: int, shape=(37, 53)):
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(shape, generator=g) * 0.02).bfloat16()
    fts = [(base.float() + torch.randn(shape, generator=g) * 0.003).bfloat16() for _ in range(3)]
    return base, fts


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_linear", "dare_ties"])
@pytest.mark.parametrize("chunk", [None, 256])
@pytest.mark.parametrize("materialise", [True, False])
def test_diff_term_equals_dense_delta(method, chunk, materialise, monkeypatch):
    if not materialise:  # the streaming path of tensors too big to form whole
        monkeypatch.setattr("persona.merge.terms.MATERIALISE_MAX_ELEMS", 0)
    base, fts = _checkpoints(1)
    alphas, densities = (1.0, 0.5, -0.5), (0.2, 0.5, 1.0)
    params = MergeParams(method, density=0.3, lambda_=0.9, seed=7)
    dense = [DenseTerm(ft.float() - base.float(), a, d, f"v{i}")
             for i, (ft, a, d) in enumerate(zip(fts, alphas, densities, strict=True))]
    diff = [DiffTerm(ft, base, a, d, f"v{i}") for i, (ft, a, d) in enumerate(zip(fts, alphas, densities, strict=True))]
    ws = (lambda: Workspace(chunk)) if chunk else Workspace
    want = merge_tensor("w", base, dense, params, torch.float32, ws())
    got = merge_tensor("w", base, diff, params, torch.float32, ws())
    assert torch.equal(got, want)


def test_diff_term_mixes_with_lora_and_dense():
    base, fts = _checkpoints(2, (8, 6))
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 6, generator=g), torch.randn(8, 2, generator=g)
    lora = LowRankTerm(a, b, 0.5, 1.0, 1.0, "lora")
    params = MergeParams("task_arithmetic", lambda_=1.0)
    got = merge_tensor("w", base, [DiffTerm(fts[0], base, -0.5, 1.0, "ft"), lora], params, torch.float32, Workspace())
    # by hand: W + (-0.5) * (W_ft - W) + 1.0 * 0.5 * B @ A, in float64 then rounded
    want = base.double() - 0.5 * (fts[0].double() - base.double()) + 0.5 * (b.double() @ a.double())
    assert torch.allclose(got.double(), want, atol=1e-6)


def test_diff_term_refuses_a_shape_mismatch():
    base, fts = _checkpoints(3, (4, 4))
    term = DiffTerm(fts[0][:3], base, 1.0, 1.0, "ft")
    with pytest.raises(Incompatible, match="shape"):
        merge_tensor("w", base, [term], MergeParams("task_arithmetic"), torch.float32, Workspace())


def test_vector_ids_without_finetuned_tensors_are_unchanged():
    # the payload of a vector with no W_ft tensors has no "finetuned" key: old ids stay valid
    vector = obj.Vector("lora", "b" * 64, {}, {"w": obj.LoraFactorRef("a" * 64, "c" * 64, 2.0)}, {})
    assert b"finetuned" not in vector.to_payload()
    with_ft = obj.Vector("dense", "b" * 64, {}, {}, {}, finetuned={"w": "d" * 64})
    back = obj.Vector.from_payload(with_ft.to_payload())
    assert back == with_ft and back.touched() == ["w"] and "d" * 64 in back.referenced_ids()


def test_a_tensor_both_delta_and_finetuned_is_malformed():
    bad = obj.Vector("dense", "b" * 64, {"w": "a" * 64}, {}, {}, finetuned={"w": "d" * 64})
    with pytest.raises(Exception, match="vector"):
        obj.Vector.from_payload(bad.to_payload())
