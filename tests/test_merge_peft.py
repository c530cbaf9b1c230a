"""Against ``peft.utils.merge_utils`` where the semantics coincide, and the known
anchor bugs of peft and mergekit where they do not.

Where peft's functions and ours agree (checked below):
- ``task_arithmetic(tensors, weights)`` is our sum_i alpha_i t_i;
- ``ties`` / ``disjoint_merge`` applied to *pre-scaled* tensors s_i = alpha_i t_i
  with unit weights is our TIES, as long as k agrees and there is no tie at the
  cut-off;
- ``prune(..., "magnitude")`` keeps our top-k mask for the same k.

Where they differ, on purpose:
- peft trims and elects on the *unweighted* t_i and applies the weights only in
  the disjoint mean, so a negative weight does not vote against (our step 1 is
  "scale first"); ``elect: count`` still agrees for positive weights;
- peft keeps k = int(density * n) (a floor) picked by ``torch.topk``, whose
  choice among equal magnitudes is unspecified; we keep ceil(density * n) with
  ties to the lowest index (mergekit also floors, and asserts k > 0);
- peft's DARE draws ``torch.bernoulli`` masks from the global RNG, so two runs
  differ; ours is seeded from (seed, tensor name, vector id).
"""

from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils as pm

from persona.merge import DenseTerm, LowRankTerm, MergeParams, Workspace, merge_tensor
from persona.merge.select import topk_mask_

pytestmark = pytest.mark.filterwarnings("ignore:The density .* no pruning will be performed")


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def ours(method, terms, shape, **params):
    return merge_tensor(
        "w", torch.zeros(shape), terms, MergeParams(method, **params), torch.float32, Workspace()
    )


def test_task_arithmetic_matches_peft():
    ts = [randn(16, 9, seed=i) for i in range(3)]
    w = [0.7, -0.3, 1.2]
    expected = pm.task_arithmetic(ts, torch.tensor(w))
    got = ours(
        "task_arithmetic",
        [DenseTerm(t, a, 1.0, f"v{i}") for i, (t, a) in enumerate(zip(ts, w, strict=True))],
        (16, 9),
    )
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("elect,peft_method", [("sum", "total"), ("count", "frequency")])
def test_ties_on_prescaled_tensors_matches_peft(elect, peft_method):
    """density 0.25 of 100 entries: int(25.0) == ceil(25) == 25, and random
    normal magnitudes do not tie, so the kept sets coincide."""
    ts = [randn(10, 10, seed=10 + i) for i in range(3)]
    alphas = [1.0, -0.5, 2.0]
    scaled = [a * t for a, t in zip(alphas, ts, strict=True)]
    expected = pm.ties(scaled, torch.ones(3), 0.25, majority_sign_method=peft_method)
    terms = [
        DenseTerm(t, a, 0.25, f"v{i}") for i, (t, a) in enumerate(zip(ts, alphas, strict=True))
    ]
    torch.testing.assert_close(ours("ties", terms, (10, 10), elect=elect), expected)


def test_count_election_matches_peft_for_positive_weights():
    """Positive weights do not change signs, so 'frequency' elects what we elect;
    peft's weighted disjoint mean sum(w t)/count is our mean of s = w t."""
    ts = [randn(8, 8, seed=20 + i) for i in range(3)]
    w = [0.5, 1.5, 1.0]
    expected = pm.ties(ts, torch.tensor(w), 0.5, majority_sign_method="frequency")
    terms = [DenseTerm(t, a, 0.5, f"v{i}") for i, (t, a) in enumerate(zip(ts, w, strict=True))]
    torch.testing.assert_close(ours("ties", terms, (8, 8), elect="count"), expected)


def test_disjoint_merge_matches_peft_at_density_one():
    ts = [randn(5, 7, seed=30 + i) for i in range(4)]
    alphas = [1.0, -1.0, 0.5, -2.0]
    s = torch.stack([a * t for a, t in zip(alphas, ts, strict=True)])
    expected = pm.disjoint_merge(s, pm.calculate_majority_sign_mask(s, method="total"))
    terms = [DenseTerm(t, a, 1.0, f"v{i}") for i, (t, a) in enumerate(zip(ts, alphas, strict=True))]
    torch.testing.assert_close(ours("ties", terms, (5, 7)), expected)
    torch.testing.assert_close(ours("dare_ties", terms, (5, 7)), expected)
    # peft's dare_ties skips its random drop at density >= 1: the same disjoint mean
    peft_dare = pm.dare_ties(list(s), torch.ones(4), 1.0)
    torch.testing.assert_close(ours("dare_ties", terms, (5, 7)), peft_dare)


def test_dare_linear_at_density_one_matches_peft():
    ts = [randn(6, 6, seed=40 + i) for i in range(2)]
    w = [0.8, -1.1]
    expected = pm.dare_linear(ts, torch.tensor(w), 1.0)  # peft skips the drop at density >= 1
    terms = [DenseTerm(t, a, 1.0, f"v{i}") for i, (t, a) in enumerate(zip(ts, w, strict=True))]
    torch.testing.assert_close(ours("dare_linear", terms, (6, 6)), expected)


def test_magnitude_prune_keeps_our_top_k():
    t = randn(50, 20, seed=50)
    pruned = pm.prune(t, 0.3, method="magnitude")
    mask = torch.empty(t.shape, dtype=torch.bool)
    topk_mask_(t, 300, mask, Workspace())
    assert torch.equal(pruned != 0, mask)
    expected = pm.magnitude_prune([t, 2 * t], torch.tensor([1.0, 0.5]), 0.3)
    torch.testing.assert_close(expected, 2 * t * mask)


def test_peft_elects_on_unweighted_tensors_and_we_do_not():
    """t1 = [1], t2 = [-0.6] with weights [1, -1]: peft sums the unweighted
    t1 + t2 = 0.4 > 0, elects +, drops t2 and returns 1. We scale first:
    s = [1], [+0.6], both positive, mean 0.8 - the negated vector agrees."""
    t1, t2 = torch.tensor([1.0]), torch.tensor([-0.6])
    assert pm.ties([t1, t2], torch.tensor([1.0, -1.0]), 1.0).tolist() == [1.0]
    terms = [DenseTerm(t1, 1.0, 1.0, "a"), DenseTerm(t2, -1.0, 1.0, "b")]
    assert ours("ties", terms, (1,)).tolist() == pytest.approx([0.8])


def test_peft_floors_k_and_we_take_the_ceiling():
    """density 0.15 of 10 entries: peft keeps int(1.5) = 1, we keep ceil(1.5) = 2."""
    t = torch.arange(1.0, 11.0)
    assert int((pm.prune(t, 0.15, method="magnitude") != 0).sum()) == 1
    assert int((ours("ties", [DenseTerm(t, 1.0, 0.15, "a")], (10,)) != 0).sum()) == 2


def test_peft_dare_is_not_reproducible_and_ours_is():
    t = torch.ones(1000)
    a = pm.dare_linear([t], torch.ones(1), 0.5)
    b = pm.dare_linear([t], torch.ones(1), 0.5)
    assert not torch.equal(a, b)  # global RNG: 2**-1000 chance of a false failure
    terms = [DenseTerm(t, 1.0, 0.5, "v")]
    assert torch.equal(
        ours("dare_linear", terms, (1000,), seed=3), ours("dare_linear", terms, (1000,), seed=3)
    )


# ------------------------------------------------------------------ anchor bugs


def test_mergekit_213_lone_negative_weight_is_not_cancelled():
    """mergekit issue #213 ("Do mergekit support negative weight?"): its TIES
    divides the weighted sum by the sum of the weights of the agreeing vectors
    when ``normalize`` is on (the default; the maintainer's answer is to set
    ``normalize: false``). With a single vector of weight -0.5 that is
    (-0.5 t) / (-0.5) = t: the negation vanishes and t is *added* at full
    strength. Our disjoint mean divides the scaled s = -0.5 t by a count, so the
    result stays base - 0.5 t."""
    t = torch.tensor([0.5, -1.0, 2.0, 0.25])
    base = torch.ones(4)
    # mergekit's normalised formula, written out: sum(w t [agree]) / sum(w [agree])
    w = -0.5
    agree = (w * t) != 0
    normalised = base + (w * t * agree) / (w * agree)
    assert torch.equal(normalised, base + t)  # the bug: negation cancelled
    got = merge_tensor(
        "w", base, [DenseTerm(t, w, 1.0, "neg")], MergeParams("ties"), torch.float32, Workspace()
    )
    assert torch.equal(got, base - 0.5 * t)
    # and with a trim the kept entries stay negated too
    got = merge_tensor(
        "w", base, [DenseTerm(t, w, 0.5, "neg")], MergeParams("ties"), torch.float32, Workspace()
    )
    assert got.tolist() == [1.0, 1.5, 0.0, 1.0]


def test_peft_3004_no_lora_cross_terms():
    """peft issue #3004 (open; fix proposed in PR #3013): ``add_weighted_adapter``
    with combination types linear/ties/dare combines the A factors and the B
    factors separately, then multiplies, so two adapters with weights [1, -1]
    give (sum of B's)(sum of A's), which contains B1 A2 and B2 A1 cross-terms
    (and a lone adapter's -1 cancels out between A and B). We form each
    scale_i * B_i @ A_i first."""
    A1, A2 = randn(4, 12, seed=60), randn(4, 12, seed=61)
    B1, B2 = randn(10, 4, seed=62), randn(10, 4, seed=63)
    terms = [LowRankTerm(A1, B1, 2.0, 1.0, 1.0, "l1"), LowRankTerm(A2, B2, 0.5, -1.0, 1.0, "l2")]
    exact = 2.0 * B1 @ A1 - 0.5 * B2 @ A2
    got = ours("task_arithmetic", terms, (10, 12))
    torch.testing.assert_close(got, exact)
    # what merging the factors separately computes (weight on A, B summed as is)
    crossed = (B1 + B2) @ (2.0 * A1 - 0.5 * A2)
    assert (crossed - exact).abs().max() > 1.0
    # and a lone negated adapter keeps its sign
    lone = ours("task_arithmetic", [LowRankTerm(A1, B1, 1.0, -1.0, 1.0, "l1")], (10, 12))
    torch.testing.assert_close(lone, -(B1 @ A1))
