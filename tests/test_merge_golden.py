"""Hand-computed merges: every expected number below was worked out on paper.

The derivations are in the comments so a reader can check them without running
anything. Values are small binary fractions, so float32 is exact and the
comparisons are equalities.
"""

from __future__ import annotations

import pytest
import torch

from persona.merge import DenseTerm, LowRankTerm, MergeParams, Workspace, merge_tensor


def merge(method, base, terms, dtype=torch.float32, **params):
    return merge_tensor("w", base, terms, MergeParams(method, **params), dtype, Workspace())


def T(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_task_arithmetic_with_a_negated_vector():
    # sum = 1*[1, 0, -1] + (-0.5)*[2, 2, 2] = [0, -1, -2]; W = [1, 2, 3] + 2 * sum = [1, 0, -1]
    terms = [DenseTerm(T(1, 0, -1), 1.0, 1.0, "a"), DenseTerm(T(2, 2, 2), -0.5, 1.0, "b")]
    assert merge("task_arithmetic", T(1, 2, 3), terms, lambda_=2.0).tolist() == [1, 0, -1]


def test_ties_keeps_exactly_k_when_magnitudes_tie_at_the_cut_off():
    # density 0.6 of 5 -> k = 3. |s| = 3, 2, 2, 2, 1: keep the 3 and the first two 2s
    # (indices 1 and 2); index 3 ties with them but would make 4 > k.
    terms = [DenseTerm(T(3, -2, 2, -2, 1), 1.0, 0.6, "a")]
    assert merge("ties", torch.zeros(5), terms).tolist() == [3, -2, 2, 0, 0]


def test_ties_with_all_zero_rows():
    # s1 = [[0, 0], [4, -1]], s2 = [[0, 0], [2, 3]]; density 0.5 -> k = 2 each: both keep row 1.
    # entry (1,0): 4 + 2 > 0, mean of the positives (4 + 2) / 2 = 3
    # entry (1,1): -1 + 3 > 0, only s2 agrees: 3 / 1 = 3
    # row 0: nothing kept -> m = 0 (elected +, count 0 -> divide by max(1, 0) = 1)
    t1 = DenseTerm(torch.tensor([[0.0, 0.0], [4.0, -1.0]]), 1.0, 0.5, "a")
    t2 = DenseTerm(torch.tensor([[0.0, 0.0], [2.0, 3.0]]), 1.0, 0.5, "b")
    out = merge("ties", torch.ones(2, 2), [t1, t2])
    assert out.tolist() == [[1, 1], [4, 4]]


def test_ties_lone_negative_vector_stays_negative():
    # s = -0.5 * [0.5, -1, 2, 0] = [-0.25, 0.5, -1, 0]; one vector: its disjoint mean is itself.
    terms = [DenseTerm(T(0.5, -1, 2, 0), -0.5, 1.0, "a")]
    assert merge("ties", torch.zeros(4), terms).tolist() == [-0.25, 0.5, -1, 0]


def test_ties_density_one_is_the_straightforward_formula():
    # s1 = [1, -2, 3], s2 = [-3, 1, 1]; sums [-2, -1, 4] -> signs [-, -, +]
    # entry 0: only -3 agrees -> -3; entry 1: only -2 -> -2; entry 2: (3 + 1) / 2 = 2
    terms = [DenseTerm(T(1, -2, 3), 1.0, 1.0, "a"), DenseTerm(T(-3, 1, 1), 1.0, 1.0, "b")]
    assert merge("ties", torch.zeros(3), terms).tolist() == [-3, -2, 2]


def test_elect_count_and_sum_disagree():
    # [5], [-1], [-1]: sum = 3 -> + -> mean 5; count = 1 - 2 < 0 -> - -> mean (-1 - 1) / 2 = -1
    terms = [
        DenseTerm(T(5), 1.0, 1.0, "a"),
        DenseTerm(T(-1), 1.0, 1.0, "b"),
        DenseTerm(T(-1), 1.0, 1.0, "c"),
    ]
    assert merge("ties", torch.zeros(1), terms, elect="sum").tolist() == [5]
    assert merge("ties", torch.zeros(1), terms, elect="count").tolist() == [-1]


def test_election_ties_go_to_plus():
    # [2], [-4]: count 1 - 1 = 0 -> + -> 2; sum 2 - 4 = -2 -> - -> -4.
    # [2], [-2] with sum: 2 - 2 = 0 -> + -> 2.
    terms = [DenseTerm(T(2), 1.0, 1.0, "a"), DenseTerm(T(-4), 1.0, 1.0, "b")]
    assert merge("ties", torch.zeros(1), terms, elect="count").tolist() == [2]
    assert merge("ties", torch.zeros(1), terms, elect="sum").tolist() == [-4]
    even = [DenseTerm(T(2), 1.0, 1.0, "a"), DenseTerm(T(-2), 1.0, 1.0, "b")]
    assert merge("ties", torch.zeros(1), even, elect="sum").tolist() == [2]


def test_negated_vector_votes_against():
    # s1 = [1, 1], s2 = -1 * [3, 0.5] = [-3, -0.5]
    # entry 0: 1 - 3 < 0 -> -3; entry 1: 1 - 0.5 > 0 -> 1. (Voting on the unscaled
    # t2 = [3, 0.5] would have elected + on entry 0, as peft's ties does.)
    terms = [DenseTerm(T(1, 1), 1.0, 1.0, "a"), DenseTerm(T(3, 0.5), -1.0, 1.0, "b")]
    assert merge("ties", torch.zeros(2), terms).tolist() == [-3, 1]


def test_per_vector_density_and_lambda():
    # s1 = [4, 3, 2, 1] density 0.25 -> k = 1: [4, 0, 0, 0]
    # s2 = [-1, -1, 1, 1] density 1: all kept
    # entry 0: 4 - 1 > 0 -> 4; entry 1: -1 -> -1; entries 2, 3: 1 -> 1
    # W = 10 + 0.5 * [4, -1, 1, 1] = [12, 9.5, 10.5, 10.5]
    terms = [DenseTerm(T(4, 3, 2, 1), 1.0, 0.25, "a"), DenseTerm(T(-1, -1, 1, 1), 1.0, 1.0, "b")]
    out = merge("ties", torch.full((4,), 10.0), terms, lambda_=0.5)
    assert out.tolist() == [12, 9.5, 10.5, 10.5]


def test_density_k_is_the_ceiling_of_the_decimal():
    # 0.7 * 10 = 7 exactly as a decimal; binary floating point says 7.000000000000001
    # and a plain ceil would keep 8.
    out = merge("ties", torch.zeros(10), [DenseTerm(torch.arange(10.0, 0.0, -1.0), 1.0, 0.7, "a")])
    assert int((out != 0).sum()) == 7
    # 0.05 * 10 = 0.5 -> ceil -> 1: a small tensor keeps its largest entry (a floor keeps none)
    out = merge("ties", torch.zeros(10), [DenseTerm(torch.arange(10.0), 1.0, 0.05, "a")])
    assert out.tolist() == [0] * 9 + [9]


def test_result_is_cast_once_from_float32():
    # bf16 has 8 significant bits: 1 + 2**-8 rounds (to even) to 1, 1 + 2**-7 is exact.
    # Two deltas of 2**-8 accumulated in float32 give 1 + 2**-7; casting after each
    # addition would give 1.
    d = torch.full((1,), 2.0**-8)
    terms = [DenseTerm(d, 1.0, 1.0, "a"), DenseTerm(d.clone(), 1.0, 1.0, "b")]
    out = merge("task_arithmetic", torch.ones(1, dtype=torch.bfloat16), terms, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert out.float().tolist() == [1 + 2.0**-7]


def test_dtypes_in_and_out():
    base = torch.ones(2, 3, dtype=torch.float16)
    terms = [DenseTerm(torch.full((2, 3), 0.5, dtype=torch.bfloat16), 2.0, 1.0, "a")]
    out = merge("task_arithmetic", base, terms, dtype=torch.float32)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    assert out.tolist() == [[2.0] * 3] * 2


def test_lora_term_golden():
    # B @ A = [[1, 2], [3, 4]] @ [[1, 0, 1], [0, 1, 1]] = [[1, 2, 3], [3, 4, 7]]; scale 0.5
    A = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    B = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    term = LowRankTerm(A, B, 0.5, 2.0, 1.0, "l")  # alpha 2 * scale 0.5 = 1
    out = merge("task_arithmetic", torch.zeros(2, 3), [term])
    assert out.tolist() == [[1, 2, 3], [3, 4, 7]]
    t_term = LowRankTerm(A, B, 0.5, 2.0, 1.0, "l", transpose=True)
    assert merge("task_arithmetic", torch.zeros(3, 2), [t_term]).tolist() == [
        [1, 3],
        [2, 4],
        [3, 7],
    ]


def test_output_is_fresh_and_out_parameter_is_honoured():
    ws = Workspace()
    terms = [DenseTerm(T(1, 2), 1.0, 1.0, "a")]
    first = merge_tensor("w", torch.zeros(2), terms, MergeParams("ties"), torch.float32, ws)
    second = merge_tensor("w", torch.ones(2), terms, MergeParams("ties"), torch.float32, ws)
    assert first.tolist() == [1, 2] and second.tolist() == [2, 3]  # not a reused buffer
    out = torch.empty(2)
    got = merge_tensor("w", torch.zeros(2), terms, MergeParams("ties"), torch.float32, ws, out=out)
    assert got is out and out.tolist() == [1, 2]
    base = torch.zeros(2)
    with pytest.raises(ValueError, match="share memory"):
        merge_tensor("w", base, terms, MergeParams("ties"), torch.float32, ws, out=base)


def test_empty_and_scalar_tensors():
    assert merge(
        "ties", torch.zeros(0, 4), [DenseTerm(torch.zeros(0, 4), 1.0, 0.5, "a")]
    ).shape == (0, 4)
    scalar = merge("ties", torch.tensor(1.0), [DenseTerm(torch.tensor(-2.0), 0.5, 0.5, "a")])
    assert scalar.shape == () and scalar.item() == 0.0
