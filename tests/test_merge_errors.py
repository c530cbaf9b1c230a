"""Everything that cannot be merged is refused with a typed error and a hint."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from persona.errors import Incompatible, InvalidInput
from persona.merge import DenseTerm, LowRankTerm, MergeParams, Workspace, keep_count, merge_tensor

METHODS = ["task_arithmetic", "ties", "dare_linear", "dare_ties"]


def merge(method, base, terms, dtype=torch.float32, **params):
    return merge_tensor("w", base, terms, MergeParams(method, **params), dtype, Workspace())


def hinted(excinfo) -> None:
    assert excinfo.value.message and excinfo.value.hint


@pytest.mark.parametrize("method", METHODS)
def test_empty_term_list(method):
    with pytest.raises(InvalidInput, match="no vectors") as e:
        merge(method, torch.zeros(3), [])
    hinted(e)


@pytest.mark.parametrize("method", METHODS)
def test_shape_mismatch(method):
    with pytest.raises(Incompatible, match="shape") as e:
        merge(method, torch.zeros(3, 4), [DenseTerm(torch.zeros(4, 3), 1.0, 1.0, "a")])
    hinted(e)
    lora = LowRankTerm(torch.zeros(2, 5), torch.zeros(3, 2), 1.0, 1.0, 1.0, "l")
    with pytest.raises(Incompatible, match="shape"):
        merge(method, torch.zeros(3, 4), [lora])
    bad_rank = LowRankTerm(torch.zeros(2, 4), torch.zeros(3, 5), 1.0, 1.0, 1.0, "l")
    with pytest.raises(Incompatible, match="do not multiply"):
        merge(method, torch.zeros(3, 4), [bad_rank])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["delta", "base", "lora"])
def test_nonfinite_inputs(method, bad, where):
    base, delta = torch.zeros(6, 700), torch.ones(6, 700)  # > 4096: the radix path for ties
    A, B = torch.ones(2, 700), torch.ones(6, 2)
    if where == "delta":
        delta[3, 5] = bad
    elif where == "base":
        base[2, 1] = bad
    else:
        A[1, 3] = bad
    terms = [DenseTerm(delta, 1.0, 0.5, "a"), LowRankTerm(A, B, 1.0, 0.5, 0.5, "l")]
    with pytest.raises(InvalidInput, match="NaN or infinite") as e:
        merge(method, base, terms)
    hinted(e)
    assert ("base" in e.value.message) == (where == "base")


def test_nonfinite_value_is_refused_even_where_dare_drops_it():
    delta = torch.ones(1000)
    delta[0] = float("nan")
    for seed in range(5):
        with pytest.raises(InvalidInput):
            merge("dare_linear", torch.zeros(1000), [DenseTerm(delta, 1.0, 0.01, "a")], seed=seed)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_density_out_of_range(density):
    with pytest.raises(InvalidInput, match="density") as e:
        MergeParams("ties", density=density)
    hinted(e)
    with pytest.raises(InvalidInput, match="density"):
        merge("ties", torch.zeros(3), [DenseTerm(torch.ones(3), 1.0, density, "a")])
    with pytest.raises(InvalidInput, match="density"):
        keep_count(density, 10)


def test_bad_params():
    for kwargs, match in [
        ({"method": "slerp"}, "unknown merge method"),
        ({"method": "ties", "elect": "majority"}, "elect"),
        ({"method": "ties", "trim": "layer"}, "trim"),
        ({"method": "dare_ties", "trim": "global"}, "ties only"),
        ({"method": "ties", "lambda_": float("nan")}, "lambda"),
        ({"method": "ties", "seed": 1.5}, "seed"),
    ]:
        with pytest.raises(InvalidInput, match=match) as e:
            MergeParams(**kwargs)
        hinted(e)


def test_bad_terms_and_dtypes():
    with pytest.raises(InvalidInput, match="alpha"):
        merge("ties", torch.zeros(2), [DenseTerm(torch.ones(2), float("inf"), 1.0, "a")])
    with pytest.raises(InvalidInput, match="twice"):
        merge("ties", torch.zeros(2), [DenseTerm(torch.ones(2), 1.0, 1.0, "a")] * 2)
    with pytest.raises(Incompatible, match="float"):
        merge("ties", torch.zeros(2, dtype=torch.int64), [DenseTerm(torch.ones(2), 1.0, 1.0, "a")])
    with pytest.raises(Incompatible, match="float"):
        merge("ties", torch.zeros(2), [DenseTerm(torch.ones(2, dtype=torch.int32), 1.0, 1.0, "a")])
    with pytest.raises(InvalidInput, match="float dtype"):
        merge("ties", torch.zeros(2), [DenseTerm(torch.ones(2), 1.0, 1.0, "a")], dtype=torch.int8)


def test_narrow_output_overflow_is_refused():
    with pytest.raises(InvalidInput, match="float16") as e:
        merge(
            "task_arithmetic",
            torch.zeros(2),
            [DenseTerm(torch.full((2,), 1e5), 1.0, 1.0, "a")],
            dtype=torch.float16,
        )
    hinted(e)
    # bfloat16's largest finite value is a little below float32's
    with pytest.raises(InvalidInput, match="bfloat16"):
        merge(
            "task_arithmetic",
            torch.full((2,), 3.4e38),
            [DenseTerm(torch.zeros(2), 1.0, 1.0, "a")],
            dtype=torch.bfloat16,
        )


def test_float32_overflow_is_refused():
    big = torch.full((2,), 3e38)
    terms = [DenseTerm(big, 1.0, 1.0, "a"), DenseTerm(big.clone(), 1.0, 1.0, "b")]
    with pytest.raises(InvalidInput, match="overflows"):
        merge("task_arithmetic", torch.zeros(2), terms)


def test_keep_count():
    assert keep_count(0.7, 10) == 7
    assert keep_count(0.1, 10) == 1
    assert keep_count(1e-9, 10) == 1
    assert keep_count(1.0, 12345) == 12345
    assert keep_count(0.5, 0) == 0
    assert keep_count(0.333, 1000) == 333


def test_package_import_does_not_load_torch():
    """The CLI's history commands import persona.merge lazily; the package itself
    must not pull torch in (the names load their submodule on first use)."""
    code = (
        "import sys, persona.merge as m; assert 'torch' not in sys.modules, 'torch loaded';"
        "m.MergeParams; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # params.py needs no torch either
