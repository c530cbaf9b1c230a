"""A LoRA term is exactly the dense term scale * B @ A, in every method."""

from __future__ import annotations

import pytest
import torch

from persona.merge import DenseTerm, LowRankTerm, MergeParams, Workspace, merge_tensor


def ints(*shape, seed):
    # small integers: B @ A is exact in float32, and with power-of-two scales and
    # densities (alpha / density exact) low-rank and dense agree bit for bit
    return torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(seed)).float()


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_linear", "dare_ties"])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_low_rank_equals_dense(method, transpose, chunk):
    A1, B1 = ints(4, 23, seed=1), ints(17, 4, seed=2)
    A2, B2 = ints(2, 23, seed=3), ints(17, 2, seed=4)
    d1, d2 = 0.5 * B1 @ A1, 2.0 * B2 @ A2
    if transpose:
        d1, d2 = d1.T.contiguous(), d2.T.contiguous()
    low = [
        LowRankTerm(A1, B1, 0.5, 1.0, 0.25, "a", transpose=transpose),
        LowRankTerm(A2, B2, 2.0, -0.5, 0.5, "b", transpose=transpose),
    ]
    dense = [DenseTerm(d1, 1.0, 0.25, "a"), DenseTerm(d2, -0.5, 0.5, "b")]
    base = ints(*d1.shape, seed=5)
    params = MergeParams(method, seed=3, lambda_=0.5)
    got = merge_tensor("w", base, low, params, torch.float32, Workspace(chunk))
    want = merge_tensor("w", base, dense, params, torch.float32, Workspace(chunk))
    assert torch.equal(got, want)


def test_materialise_and_bf16_factors():
    A = ints(3, 8, seed=6).to(torch.bfloat16)
    B = ints(5, 3, seed=7).to(torch.bfloat16)
    term = LowRankTerm(A, B, 0.25, 1.0, 1.0, "l")
    buf = torch.empty(100)
    got = term.materialise(buf)
    assert got.shape == (5, 8) and got.dtype == torch.float32
    assert torch.equal(got, 0.25 * B.float() @ A.float())
    assert got.data_ptr() == buf.data_ptr()  # written into the caller's buffer
    dense = DenseTerm(torch.ones(2, 3, dtype=torch.bfloat16), 1.0, 1.0, "d").materialise(buf)
    assert torch.equal(dense, torch.ones(2, 3))


def test_mixed_dense_and_low_rank_terms():
    A, B = ints(2, 6, seed=8), ints(4, 2, seed=9)
    dense = ints(4, 6, seed=10)
    terms = [LowRankTerm(A, B, 1.0, 1.0, 1.0, "l"), DenseTerm(dense, -1.0, 1.0, "d")]
    out = merge_tensor(
        "w", torch.zeros(4, 6), terms, MergeParams("task_arithmetic"), torch.float32, Workspace(7)
    )
    assert torch.equal(out, B @ A - dense)
