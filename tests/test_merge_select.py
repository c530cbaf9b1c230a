"""The exact radix select against sorting, including ties, zeros, -0.0 and denormals."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from persona.errors import InvalidInput
from persona.merge import DenseTerm, MergeParams, Workspace, merge_tensor
from persona.merge.select import (
    Cut,
    GlobalTopK,
    bits_from_f32,
    f32_from_bits,
    magnitude_threshold,
    topk_cut,
    topk_mask_,
)
from tests.test_merge_reference import MODES, ref_keep, select_mode

SPECIAL = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 1e-45, -1e-45, 1e-40, 3.4e38, -0.5])
VALUES = st.one_of(SPECIAL, st.floats(width=32, allow_nan=False, allow_infinity=False))


def sorted_magnitudes(x: torch.Tensor) -> torch.Tensor:
    return torch.sort(x.reshape(-1).abs(), descending=True).values


@settings(max_examples=100, deadline=None)
@given(
    st.lists(VALUES, min_size=1, max_size=60),
    st.data(),
    st.sampled_from([1, 4, 1 << 20]),
    MODES,
)
def test_mask_is_exactly_the_stable_sort_top_k(values, data, chunk, mode):
    x = torch.tensor(values, dtype=torch.float32)
    k = data.draw(st.integers(0, x.numel()))
    out = torch.empty(x.numel(), dtype=torch.bool)
    with select_mode(mode):
        topk_mask_(x, k, out, Workspace(chunk))
    assert int(out.sum()) == k
    assert torch.equal(out, ref_keep(x, k))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(VALUES, min_size=1, max_size=60),
    st.data(),
    st.sampled_from([1, 5, 1 << 20]),
    MODES,
)
def test_threshold_is_the_kth_largest_magnitude(values, data, chunk, mode):
    x = torch.tensor(values, dtype=torch.float32)
    k = data.draw(st.integers(1, x.numel()))
    with select_mode(mode):
        t = magnitude_threshold(x, k, Workspace(chunk))
    assert t == float(sorted_magnitudes(x)[k - 1])


def test_ties_at_the_cut_off_go_to_the_lowest_index():
    x = torch.tensor([1.0, -3.0, 2.0, -2.0, 2.0, 0.5])
    out = torch.empty(6, dtype=torch.bool)
    topk_mask_(x, 3, out, Workspace())
    assert out.tolist() == [False, True, True, True, False, False]


def test_a_keep_at_least_the_threshold_rule_would_keep_every_tie():
    """The seed note's sketch zeroes ``|x| < quantile`` and so keeps every entry
    equal to the threshold: on 10 equal magnitudes at density 0.2 it keeps all
    10. The semantics ask for exactly k = 2."""
    x = torch.full((10,), 0.5)
    sketch_kept = int((x.abs() >= x.abs().quantile(0.8)).sum())
    out = torch.empty(10, dtype=torch.bool)
    topk_mask_(x, 2, out, Workspace())
    assert sketch_kept == 10
    assert out.tolist() == [True, True] + [False] * 8


def test_negative_zero_ties_with_zero_and_denormals_rank_above_it():
    x = torch.tensor([0.0, -0.0, 1e-45, -1e-44, 0.0])
    out = torch.empty(5, dtype=torch.bool)
    topk_mask_(x, 3, out, Workspace())
    # |-1e-44| > |1e-45| > 0; the third is the first of the zeros (index 0).
    assert out.tolist() == [True, False, True, True, False]


@pytest.mark.parametrize("mode", [(1 << 12, 1 << 22), (0, 1 << 22), (0, 0)])
@pytest.mark.parametrize("origin", ["float32", "bfloat16"])
def test_large_tensors_match_sorting(mode, origin):
    """Big enough for the bincount path; bfloat16-origin deltas have huge ties
    (every bucket is one value), float32 ones almost none."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(100_001, generator=g)
    if origin == "bfloat16":
        x = x.to(torch.bfloat16).float()
    x[1000:1100] = x[5]  # a block of ties wherever the cut falls
    order = torch.argsort(x.abs(), descending=True, stable=True)
    ws = Workspace(1 << 15)  # chunks big enough for the bincount histogram
    for k in (1, 17, 20_000, 50_000, 99_999, 100_001):
        out = torch.empty(x.numel(), dtype=torch.bool)
        with select_mode(mode):
            topk_mask_(x, k, out, ws)
        expected = torch.zeros(x.numel(), dtype=torch.bool)
        expected[order[:k]] = True
        assert torch.equal(out, expected), k


def test_whole_bucket_shortcut_keeps_exactly_k():
    # 1.0 and 1.5 share no bucket; taking all of the 1.5s ends exactly at a bucket edge.
    x = torch.tensor([1.5] * 3 + [1.0] * 5000)
    cut = topk_cut(x, 3, Workspace())
    assert cut.split == x.numel()
    out = torch.empty(x.numel(), dtype=torch.bool)
    topk_mask_(x, 3, out, Workspace())
    assert out[:3].all() and not out[3:].any()


@pytest.mark.parametrize("small_n", [1 << 12, 0])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_values_are_refused(small_n, bad):
    x = torch.randn(5000)
    x[1234] = bad
    out = torch.empty(x.numel(), dtype=torch.bool)
    with select_mode((small_n, 1 << 22)), pytest.raises(InvalidInput, match="NaN or infinite"):
        topk_mask_(x, 10, out, Workspace())


def test_bit_helpers_and_bounds():
    assert f32_from_bits(bits_from_f32(0.75)) == 0.75
    cut = Cut(bits_from_f32(2.0), 3, 10, 4)
    before, after = cut.float_bounds()
    assert after == 2.0 and before < 2.0 and bits_from_f32(before) == bits_from_f32(2.0) - 1
    assert Cut(0, 10, 10, 10).float_bounds() == (0.0, 0.0)


def test_magnitude_threshold_rejects_k_out_of_range():
    with pytest.raises(ValueError):
        magnitude_threshold(torch.ones(3), 0, Workspace())
    with pytest.raises(ValueError):
        magnitude_threshold(torch.ones(3), 4, Workspace())


# ------------------------------------------------------------------ GlobalTopK


def run_global(tensors: dict[str, list[DenseTerm]], ws: Workspace):
    acc = GlobalTopK(ws)
    while acc.needs_pass:
        for name, terms in tensors.items():
            acc.observe(name, terms)
        acc.end_pass()
    return acc.result()


def test_global_trim_on_one_tensor_is_the_per_tensor_trim():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 33, generator=g)
    terms = [DenseTerm(torch.randn(64, 33, generator=g), a, 0.3, f"v{a}") for a in (1.0, -0.5)]
    ws = Workspace(512)
    cuts = run_global({"w": terms}, ws)
    local = merge_tensor("w", base, terms, MergeParams("ties"), torch.float32, ws)
    glob = merge_tensor(
        "w", base, terms, MergeParams("ties", trim="global"), torch.float32, ws, cuts
    )
    assert torch.equal(local, glob)


def test_global_threshold_is_shared_across_tensors():
    """A tensor of large deltas keeps most of its entries, one of small deltas
    almost none: the paper's point of a per-model threshold."""
    big = DenseTerm(torch.full((10,), 5.0) + torch.arange(10.0), 1.0, 0.5, "v")
    small = DenseTerm(torch.arange(1.0, 11.0) / 100, 1.0, 0.5, "v")
    cuts = run_global({"a": [big], "b": [small]}, Workspace())
    cut = cuts["v"]
    assert (cut.k, cut.n) == (10, 20)
    assert cut.threshold == 5.0  # the 10 entries of "a" are exactly the top 10


def test_global_ties_split_in_sorted_name_order():
    ties = {name: [DenseTerm(torch.ones(4), 1.0, 0.5, "v")] for name in ("b", "a", "c")}
    cut = run_global(ties, Workspace())["v"]
    assert cut.k == 6
    assert dict(cut.keep_equal) == {"a": 4, "b": 2, "c": 0}


def test_global_refuses_inconsistent_feeding():
    ws = Workspace()
    acc = GlobalTopK(ws)
    acc.observe("a", [DenseTerm(torch.ones(4), 1.0, 0.5, "v")])
    with pytest.raises(InvalidInput, match="twice"):
        acc.observe("a", [DenseTerm(torch.ones(4), 1.0, 0.5, "v")])
    with pytest.raises(InvalidInput, match="density"):
        acc.observe("b", [DenseTerm(torch.ones(4), 1.0, 0.3, "v")])
    with pytest.raises(ValueError, match="not finished"):
        acc.result()
    acc = GlobalTopK(ws)
    acc.observe("a", [DenseTerm(torch.arange(4.0), 1.0, 0.5, "v")])
    acc.end_pass()
    with pytest.raises(ValueError, match="first pass"):
        acc.observe("z", [DenseTerm(torch.arange(4.0), 1.0, 0.5, "v")])


def test_global_refuses_nonfinite():
    acc = GlobalTopK(Workspace())
    acc.observe("a", [DenseTerm(torch.tensor([1.0, float("nan")]), 1.0, 0.5, "v")])
    with pytest.raises(InvalidInput, match="NaN"):
        acc.end_pass()


def test_global_trim_requires_the_cuts():
    terms = [DenseTerm(torch.ones(3), 1.0, 0.5, "v")]
    with pytest.raises(InvalidInput, match="global"):
        merge_tensor(
            "w",
            torch.zeros(3),
            terms,
            MergeParams("ties", trim="global"),
            torch.float32,
            Workspace(),
        )
    with pytest.raises(InvalidInput, match="no global threshold"):
        merge_tensor(
            "w",
            torch.zeros(3),
            terms,
            MergeParams("ties", trim="global"),
            torch.float32,
            Workspace(),
            {},
        )
