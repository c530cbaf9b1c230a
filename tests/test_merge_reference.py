"""The merge kernels against a straightforward reference, on random tensors.

The reference below is written independently of ``persona.merge``: float64,
a stable argsort for the top-k (ties go to the lowest flat index because a
stable sort keeps equal magnitudes in index order), and the DESIGN.md formulas
spelled out literally. Inputs are drawn on a dyadic grid (multiples of 1/8,
alphas like -0.5 or 1.5) so that float32 products and sums are exact: then any
difference is a semantic difference, not rounding, and the grid makes ties at
the cut-off, zeros and sign cancellations frequent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from unittest.mock import patch

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from persona.merge import DenseTerm, MergeParams, Workspace, merge_tensor
from persona.merge import select as select_mod
from persona.merge.select import GlobalTopK

SETTINGS = settings(max_examples=100, deadline=None)


# ----------------------------------------------------------------- the reference


def ref_k(density: float, n: int) -> int:
    return min(n, math.ceil(Fraction(str(density)) * n))


def ref_keep(x: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k largest |x| (flat), ties to the lowest index."""
    flat = x.reshape(-1).to(torch.float64).abs()
    order = torch.argsort(flat, descending=True, stable=True)
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    return keep.view(x.shape)


def ref_task_arithmetic(base, deltas, alphas, lam):
    total = sum(a * d.double() for a, d in zip(alphas, deltas, strict=True))
    return base.double() + lam * total


def ref_disjoint(base, scaled, lam, elect):
    stack = torch.stack(scaled)
    if elect == "sum":
        e = torch.where(stack.sum(0) >= 0, 1.0, -1.0).double()
    else:
        e = torch.where(torch.sign(stack).sum(0) >= 0, 1.0, -1.0).double()
    agree = torch.sign(stack) == e
    m = (stack * agree).sum(0) / agree.sum(0).clamp(min=1)
    return base.double() + lam * m


def ref_ties(base, deltas, alphas, densities, lam, elect, keeps=None):
    scaled = []
    for i, (d, a, p) in enumerate(zip(deltas, alphas, densities, strict=True)):
        s = a * d.double()
        keep = keeps[i] if keeps is not None else ref_keep(s, ref_k(p, s.numel()))
        scaled.append(torch.where(keep, s, 0.0))
    return ref_disjoint(base, scaled, lam, elect)


# ----------------------------------------------------------------- strategies

GRID = st.integers(-16, 16).map(lambda i: i / 8)
ALPHAS = st.sampled_from([-1.0, -0.5, 0.5, 1.0, 1.5, 2.0])
DENSITIES = st.sampled_from([0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 0.9, 1.0])
LAMBDAS = st.sampled_from([1.0, 0.5, 2.0, -1.0])
CHUNKS = st.sampled_from([1, 3, 8, 1 << 20])
# (SMALL_N, POSITION_CAP): the sort path for small tensors; the radix path; the
# radix path that forgets its candidates and needs the third (tie) pass.
MODES = st.sampled_from([(1 << 12, 1 << 22), (0, 1 << 22), (0, 0)])


@contextmanager
def select_mode(mode: tuple[int, int]) -> Iterator[None]:
    small_n, cap = mode
    with (
        patch.object(select_mod, "SMALL_N", small_n),
        patch.object(select_mod, "POSITION_CAP", cap),
    ):
        yield


@st.composite
def merge_case(draw):
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 7))
    n_terms = draw(st.integers(1, 4))

    def tensor():
        vals = draw(st.lists(GRID, min_size=rows * cols, max_size=rows * cols))
        return torch.tensor(vals, dtype=torch.float32).view(rows, cols)

    base = tensor()
    deltas = [tensor() for _ in range(n_terms)]
    alphas = [draw(ALPHAS) for _ in range(n_terms)]
    densities = [draw(DENSITIES) for _ in range(n_terms)]
    return base, deltas, alphas, densities, draw(LAMBDAS), draw(CHUNKS), draw(MODES)


def terms_of(deltas, alphas, densities):
    return [
        DenseTerm(d, a, p, f"v{i}")
        for i, (d, a, p) in enumerate(zip(deltas, alphas, densities, strict=True))
    ]


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.double(), expected, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------- the properties


@SETTINGS
@given(merge_case())
def test_task_arithmetic_matches_reference(case):
    base, deltas, alphas, densities, lam, chunk, mode = case
    out = merge_tensor(
        "w",
        base,
        terms_of(deltas, alphas, densities),
        MergeParams("task_arithmetic", lambda_=lam),
        torch.float32,
        Workspace(chunk),
    )
    close(out, ref_task_arithmetic(base, deltas, alphas, lam))


@SETTINGS
@given(merge_case(), st.sampled_from(["sum", "count"]))
def test_ties_matches_reference(case, elect):
    base, deltas, alphas, densities, lam, chunk, mode = case
    params = MergeParams("ties", lambda_=lam, elect=elect)
    terms = terms_of(deltas, alphas, densities)
    with select_mode(mode):
        out = merge_tensor("w", base, terms, params, torch.float32, Workspace(chunk))
    close(out, ref_ties(base, deltas, alphas, densities, lam, elect))


@SETTINGS
@given(merge_case(), st.sampled_from(["sum", "count"]))
def test_dare_at_density_one_is_its_deterministic_counterpart(case, elect):
    """With density 1 nothing is dropped: dare_linear is task arithmetic and
    dare_ties is the sign election + disjoint mean without any trim."""
    base, deltas, alphas, _, lam, chunk, mode = case
    ones = [1.0] * len(deltas)
    terms = terms_of(deltas, alphas, ones)
    ws = Workspace(chunk)
    lin = merge_tensor("w", base, terms, MergeParams("dare_linear", lambda_=lam), torch.float32, ws)
    close(lin, ref_task_arithmetic(base, deltas, alphas, lam))
    params = MergeParams("dare_ties", lambda_=lam, elect=elect)
    dt = merge_tensor("w", base, terms, params, torch.float32, ws)
    close(dt, ref_ties(base, deltas, alphas, ones, lam, elect))


@SETTINGS
@given(
    merge_case(),
    st.lists(st.sampled_from([0.25, 0.5, 1.0]), min_size=4, max_size=4),
    st.sampled_from(["sum", "count"]),
    st.integers(0, 2**32),
)
def test_dare_ties_matches_reference_given_the_same_masks(case, densities, elect, seed):
    """Replay each vector's kept entries, then elect and average as the reference does.

    Dyadic densities keep alpha / density exact, so the comparison stays exact.
    """
    base, deltas, alphas, _, lam, chunk, mode = case
    densities = densities[: len(deltas)]
    ws = Workspace(chunk)
    zero = torch.zeros_like(base)
    scaled = []
    for i, (d, a, p) in enumerate(zip(deltas, alphas, densities, strict=True)):
        # A lone all-ones vector with the same id shows the vector's mask: the
        # stream depends on seed, tensor name and vector id only, not on values.
        probe = DenseTerm(torch.ones_like(d), 1.0, p, f"v{i}")
        params = MergeParams("dare_linear", seed=seed)
        keep = merge_tensor("w", zero, [probe], params, torch.float32, ws) != 0
        scaled.append(torch.where(keep, a * d.double() / p, 0.0))
    params = MergeParams("dare_ties", lambda_=lam, elect=elect, seed=seed)
    out = merge_tensor("w", base, terms_of(deltas, alphas, densities), params, torch.float32, ws)
    close(out, ref_disjoint(base, scaled, lam, elect))


@SETTINGS
@given(
    st.lists(merge_case(), min_size=1, max_size=3),
    st.sampled_from(["sum", "count"]),
    st.randoms(use_true_random=False),
)
def test_global_trim_matches_reference(cases, elect, rnd):
    """One threshold per vector over all tensors; ties served in sorted tensor
    name order, then flat index: the reference concatenates in that order."""
    n_vec = min(len(c[1]) for c in cases)
    alphas = [cases[0][2][i] for i in range(n_vec)]
    densities = [cases[0][3][i] for i in range(n_vec)]
    tensors = {f"t{j}": (c[0], c[1][:n_vec]) for j, c in enumerate(cases)}
    names = sorted(tensors)
    # reference masks
    keeps: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for i in range(n_vec):
        flat = torch.cat([alphas[i] * tensors[nm][1][i].reshape(-1).double() for nm in names])
        keep = ref_keep(flat, ref_k(densities[i], flat.numel()))
        start = 0
        for nm in names:
            size = tensors[nm][1][i].numel()
            keeps[nm].append(keep[start : start + size].view(tensors[nm][1][i].shape))
            start += size
    ws = Workspace(cases[0][5])

    def feed():
        order = list(names)
        rnd.shuffle(order)  # the order tensors are fed in must not matter
        for nm in order:
            yield nm, terms_of(tensors[nm][1], alphas, densities)

    params = MergeParams("ties", elect=elect, trim="global")
    with select_mode(cases[0][6]):
        acc = GlobalTopK(ws)
        while acc.needs_pass:
            for nm, terms in feed():
                acc.observe(nm, terms)
            acc.end_pass()
        cuts = acc.result()
        for nm in names:
            base, deltas = tensors[nm]
            terms = terms_of(deltas, alphas, densities)
            out = merge_tensor(nm, base, terms, params, torch.float32, ws, cuts)
            close(out, ref_ties(base, deltas, alphas, densities, 1.0, elect, keeps[nm]))


@SETTINGS
@given(merge_case())
def test_results_do_not_depend_on_chunk_size(case):
    base, deltas, alphas, densities, lam, chunk, mode = case
    terms = terms_of(deltas, alphas, densities)
    for method in ("task_arithmetic", "ties", "dare_linear", "dare_ties"):
        params = MergeParams(method, lambda_=lam, seed=7)
        with select_mode(mode):
            a = merge_tensor("w", base, terms, params, torch.float32, Workspace(chunk))
        b = merge_tensor("w", base, terms, params, torch.float32, Workspace(1 << 20))
        assert torch.equal(a, b), method
