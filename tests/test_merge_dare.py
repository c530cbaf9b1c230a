"""DARE: reproducible random drops, independent of term order and chunking."""

from __future__ import annotations

import pytest
import torch

from persona.merge import DenseTerm, LowRankTerm, MergeParams, Workspace, merge_tensor
from persona.merge.dare import dare_seed


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def run(method, terms, name="w", seed=0, chunk=1 << 20, base=None, **params):
    shape = terms[0].shape
    base = torch.zeros(shape) if base is None else base
    return merge_tensor(
        name, base, terms, MergeParams(method, seed=seed, **params), torch.float32, Workspace(chunk)
    )


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_same_inputs_same_bytes_regardless_of_term_order(method):
    a = DenseTerm(randn(40, 30, seed=1), 1.0, 0.3, "a")
    b = DenseTerm(randn(40, 30, seed=2), -0.5, 0.6, "b")
    first = run(method, [a, b], seed=11)
    assert torch.equal(first, run(method, [a, b], seed=11))
    assert torch.equal(first, run(method, [b, a], seed=11))  # two terms: a + b == b + a exactly


def test_a_vectors_mask_does_not_depend_on_the_other_vectors():
    ones = DenseTerm(torch.ones(50, 20), 1.0, 0.4, "a")
    alone = run("dare_linear", [ones], seed=5) != 0
    other = DenseTerm(randn(50, 20, seed=3), 1.0, 0.4, "zzz")
    zero_b = DenseTerm(torch.zeros(50, 20), 1.0, 0.4, "b")
    together = run("dare_linear", [zero_b, ones, other], seed=5)
    assert torch.equal(run("dare_linear", [zero_b, ones], seed=5) != 0, alone)
    assert not torch.equal(together != 0, alone)  # sanity: the third vector does contribute


def test_stream_depends_on_seed_name_and_vector():
    t = torch.ones(64, 64)
    base = run("dare_linear", [DenseTerm(t, 1.0, 0.5, "a")], name="w", seed=0)
    assert not torch.equal(
        base, run("dare_linear", [DenseTerm(t, 1.0, 0.5, "a")], name="w2", seed=0)
    )
    assert not torch.equal(
        base, run("dare_linear", [DenseTerm(t, 1.0, 0.5, "b")], name="w", seed=0)
    )
    assert not torch.equal(
        base, run("dare_linear", [DenseTerm(t, 1.0, 0.5, "a")], name="w", seed=1)
    )
    assert dare_seed(0, "w", "a") == dare_seed(0, "w", "a")
    # no ambiguity from concatenation: ("ab", "c") is not ("a", "bc")
    assert dare_seed(0, "ab", "c") != dare_seed(0, "a", "bc")


def test_chunking_does_not_change_the_stream():
    terms = [
        DenseTerm(randn(37, 11, seed=4), 1.5, 0.35, "a"),
        DenseTerm(randn(37, 11, seed=5), 1.0, 0.8, "b"),
    ]
    for method in ("dare_linear", "dare_ties"):
        assert torch.equal(run(method, terms, seed=9, chunk=1), run(method, terms, seed=9))
        assert torch.equal(run(method, terms, seed=9, chunk=50), run(method, terms, seed=9))


def test_keep_rate_and_rescale():
    """Kept entries are alpha * t / density; the fraction kept is the density.
    200,000 draws: the standard deviation of the rate is about 0.001, the bound 5 of them."""
    t = torch.full((400, 500), 2.0)
    out = run("dare_linear", [DenseTerm(t, 0.5, 0.3, "a")], seed=123)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.005
    torch.testing.assert_close(out[kept], torch.full((int(kept.sum()),), 0.5 * 2.0 / 0.3))


def test_expectation_is_task_arithmetic():
    """Averaged over seeds, rescaled dropping is unbiased: mean of 200 DARE merges
    is within a few standard errors of task arithmetic."""
    t = randn(20, 10, seed=6)
    terms = [DenseTerm(t, 1.0, 0.5, "a")]
    mean = sum(run("dare_linear", terms, seed=s) for s in range(200)) / 200
    # per entry: var of t*B/p is t^2 (1-p)/p = t^2; standard error |t| / sqrt(200)
    assert ((mean - t).abs() <= 5 * t.abs() / 200**0.5 + 1e-6).all()


def test_dare_ties_elects_after_dropping():
    """With density 1 nothing drops: dare_ties is the disjoint mean (hand-computed:
    [1, -2] and [-3, 1] -> sums [-2, -1] -> [-3, -2])."""
    terms = [
        DenseTerm(torch.tensor([1.0, -2.0]), 1.0, 1.0, "a"),
        DenseTerm(torch.tensor([-3.0, 1.0]), 1.0, 1.0, "b"),
    ]
    assert run("dare_ties", terms).tolist() == [-3, -2]


def test_lora_terms_are_dropped_after_materialising():
    A, B = randn(3, 16, seed=7), randn(12, 3, seed=8)
    lora = LowRankTerm(A, B, 2.0, 1.0, 0.5, "l")
    dense = DenseTerm(2.0 * B @ A, 1.0, 0.5, "l")
    torch.testing.assert_close(
        run("dare_linear", [lora], seed=1), run("dare_linear", [dense], seed=1)
    )
