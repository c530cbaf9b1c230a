"""Microbenchmark: exact top-k selection and a full TIES tensor merge.

Run: ``.venv/bin/python benchmarks/select_microbench.py [--threads 2] [--out FILE]``

What it measures (min over ``--repeat`` runs after one warm-up, in ms):

1. choosing the top 20% magnitudes of one float32 tensor, 4096x4096 and
   2048x8192: our radix select (``topk_cut``: the exact cut; ``topk_mask_``:
   cut plus writing the bool mask) against ``torch.topk``, ``torch.kthvalue``
   and a full ``torch.argsort`` (what mergekit's magnitude sparsification
   does), with a plain pass (``abs``) as the unit;
2. a full TIES merge of one 4096x4096 bf16 tensor with three bf16 vectors at
   density 0.2 (bf16 out): ``merge_tensor`` against a straightforward
   sort-based implementation of mergekit's algorithm and against
   ``peft.utils.merge_utils.ties`` (topk-based) when peft is installed; also
   task arithmetic and DARE for scale. Throughput is reported per GB of input
   (base + deltas, bf16).

This is a benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from persona.merge import DenseTerm, MergeParams, Workspace, merge_tensor  # noqa: E402
from persona.merge.select import topk_cut, topk_mask_  # noqa: E402


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def sort_based_ties(
    base: torch.Tensor, deltas: list[torch.Tensor], weights: list[float], density: float
) -> torch.Tensor:
    """mergekit's TIES as its source describes it: argsort-based magnitude
    sparsify per vector (k = int(density * n)), weights applied after, sign by
    the weighted sum, divide by the sum of agreeing weights (normalize on)."""
    sparse = []
    for d in deltas:
        w = d.abs().reshape(-1).float()
        k = int(density * w.numel())
        mask = torch.zeros_like(w)
        mask[torch.argsort(w, descending=True)[:k]] = 1
        sparse.append(d.float() * mask.view(d.shape))
    stacked = torch.stack(sparse)
    wt = torch.tensor(weights).view(-1, *([1] * base.dim()))
    weighted = stacked * wt
    majority = (weighted.sum(0) >= 0).float() * 2 - 1
    agree = weighted.sign() == majority
    mixed = (weighted * agree).sum(0)
    divisor = (wt * agree).sum(0)
    divisor[divisor == 0] = 1
    return (base.float() + mixed / divisor).to(base.dtype)


def bench_select(shape: tuple[int, int], repeat: int, ws: Workspace) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).reshape(-1)
    n = x.numel()
    k = n // 5
    mask = torch.empty(n, dtype=torch.bool)
    buf = torch.empty_like(x)
    out = {
        "plain_pass_abs": best_ms(lambda: torch.abs(x, out=buf), repeat),
        "radix_cut": best_ms(lambda: topk_cut(x, k, ws), repeat),
        "radix_mask": best_ms(lambda: topk_mask_(x, k, mask, ws), repeat),
        "torch_topk": best_ms(lambda: torch.topk(x.abs(), k, sorted=False), repeat),
        "torch_kthvalue": best_ms(lambda: torch.kthvalue(x.abs(), n - k + 1), repeat),
        "torch_argsort": best_ms(
            lambda: torch.argsort(x.abs(), descending=True), max(1, repeat // 2)
        ),
    }
    xb = x.to(torch.bfloat16).float()  # bf16-origin values: every bucket is one value, ties galore
    out["radix_cut_bf16_origin"] = best_ms(lambda: topk_cut(xb, k, ws), repeat)
    return out


def bench_merge(shape: tuple[int, int], n_vec: int, repeat: int, ws: Workspace) -> dict[str, float]:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(shape, generator=g).to(torch.bfloat16)
    deltas = [(0.01 * torch.randn(shape, generator=g)).to(torch.bfloat16) for _ in range(n_vec)]
    alphas = [1.0, 0.5, 0.8, 1.2][:n_vec]
    terms = [
        DenseTerm(d, a, 0.2, f"v{i}") for i, (d, a) in enumerate(zip(deltas, alphas, strict=True))
    ]
    gb = (base.numel() * base.element_size() * (1 + n_vec)) / 1e9

    def ours(method: str) -> Callable[[], object]:
        params = MergeParams(method, density=0.2)
        return lambda: merge_tensor("w", base, terms, params, torch.bfloat16, ws)

    res = {
        "input_gb": gb,
        "ties_ms": best_ms(ours("ties"), repeat),
        "task_arithmetic_ms": best_ms(ours("task_arithmetic"), repeat),
        "dare_ties_ms": best_ms(ours("dare_ties"), repeat),
        "sort_based_ties_ms": best_ms(lambda: sort_based_ties(base, deltas, alphas, 0.2), 1),
    }
    try:
        from peft.utils import merge_utils as pm
    except ImportError:
        pass
    else:
        wts = torch.tensor(alphas)
        res["peft_ties_ms"] = best_ms(
            lambda: (base.float() + pm.ties([d.float() for d in deltas], wts, 0.2)).to(
                torch.bfloat16
            ),
            1,
        )
    for key in [k for k in res if k.endswith("_ms")]:
        res[key.replace("_ms", "_s_per_gb")] = res[key] / 1e3 / gb
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--vectors", type=int, default=3)
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ws = Workspace()
    results: dict[str, object] = {
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "select": {
            f"{r}x{c}": bench_select((r, c), args.repeat, ws)
            for r, c in ((4096, 4096), (2048, 8192))
        },
        "merge_4096x4096": bench_merge((4096, 4096), args.vectors, args.repeat, ws),
    }
    for shape, row in results["select"].items():
        unit = row["plain_pass_abs"]
        print(f"select top 20% of {shape} float32 (ms; in plain passes):")
        for key, ms in row.items():
            print(f"  {key:24s} {ms:9.1f}  {ms / unit:6.1f}x")
    m = results["merge_4096x4096"]
    print(
        f"TIES merge, 4096x4096 bf16, {args.vectors} vectors, density 0.2 ({m['input_gb']:.3f} GB in):"
    )
    for key in [k for k in m if k.endswith("_ms")]:
        per_gb = m[key.replace("_ms", "_s_per_gb")]
        print(
            f"  {key:24s} {m[key]:9.1f} ms  {per_gb:6.2f} s/GB  {m[key] / m['ties_ms']:6.1f}x ours"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
