"""Merge benchmark: persona against mergekit and against the I/O floor, in one run.

    .venv/bin/python benchmarks/bench_merge.py [--sizes 0.5b,1.5b] [--repeat 2] [--tasks ties,ta,lora]
    .venv/bin/python benchmarks/bench_merge.py --profile        # cProfile of persona's TIES on 0.5b

What runs (see benchmarks/README.md for what every number means):

- synthetic bf16 Llama checkpoints (``make_checkpoints.py``): a base, three
  fine-tuned variants and, on 1.5b, three rank-16 PEFT LoRA adapters;
- a persona store per size with the base and the vectors imported once (the
  imports are timed as their own rows: a one-time cost per model);
- per repeat, per size, alternating which tool goes first: TIES (density 0.2,
  alphas 1.0 / 0.5 / -0.5, lambda 1) and task arithmetic (same alphas) by
  ``persona merge`` (store -> store), ``persona build`` (store -> HF dir) and
  ``mergekit-yaml`` (checkpoints -> HF dir, ``normalize: false``,
  ``int8_mask: false``, bf16 in and out); on 1.5b the LoRA merge: three
  adapters into the base, persona's LoRA vectors against mergekit's
  ``base+lora`` model references (each merged by PEFT into a LoRA cache, then
  task arithmetic);
- the floor: the checkpoints' bytes over the read bandwidth measured in the same
  run (cold: after ``posix_fadvise(DONTNEED)``; and from the page cache) plus
  the output's bytes over the measured write bandwidth (with fsync).

Every timed command is a subprocess sampled every 20 ms (``_measure.py``) for
wall time, peak RSS and peak anonymous memory, started with its inputs evicted
from the page cache and, for persona, on a fresh copy of the store's refs and
database whose ``objects`` folder is the imported store's own (a symlink: the
files keep the identity persona recorded when it wrote them, as in a user's
store); the objects a run adds are deleted after it, and each run merges a
recipe seed never used before, so a merge never finds its result already
stored. Results:
``benchmarks/results/merge.json`` and ``benchmarks/results/merge.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _measure as M  # noqa: E402
import make_checkpoints as MC  # noqa: E402

PERSONA = ROOT / ".venv" / "bin" / "persona"
PY = ROOT / ".venv" / "bin" / "python"
RESULTS = HERE / "results"
ALPHAS = {"ft1": 1.0, "ft2": 0.5, "ft3": -0.5}
LORA_ALPHAS = {"lora1": 1.0, "lora2": 0.5, "lora3": -0.5}
DENSITY = 0.2
MERGEKIT_VERSION = "0.1.5"
TASKS = ("ties", "ta", "lora")
TASK_TITLES = {"ties": "TIES", "ta": "task arithmetic", "lora": "LoRA x3 (task arithmetic)"}
GB = 1e9


def log(msg: str) -> None:
    print(msg, flush=True)


# -- environment ------------------------------------------------------------------

def bench_dir() -> Path:
    return MC.bench_dir()


def mergekit_venv() -> Path:
    return bench_dir() / "mergekit-venv"


def ensure_mergekit() -> Path:
    """An isolated venv with torch 2.13.0 (the CPU wheel on disk) and mergekit, made once."""
    venv = mergekit_venv()
    exe = venv / "bin" / "mergekit-yaml"
    if exe.exists():
        return exe
    log(f"creating the mergekit venv in {venv} ...")
    subprocess.run([sys.executable if "venv" not in sys.executable else "python3", "-m", "venv", str(venv)],
                   check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, f"mergekit=={MERGEKIT_VERSION}", "py-spy"], check=True)
    return exe


def _version(python: Path, module: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({module!r}))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_gb"] = round(int(line.split()[1]) * 1024 / GB, 1)
    except OSError:
        pass
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    info["persona_git"] = rev.stdout.strip()
    info["torch"] = _version(PY, "torch")
    info["mergekit"] = _version(mergekit_venv() / "bin" / "python", "mergekit")
    info["mergekit_torch"] = _version(mergekit_venv() / "bin" / "python", "torch")
    return info


def env_persona(store: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PERSONA_STORE"] = str(store)
    env.pop("PERSONA_DEBUG", None)
    return env


def env_mergekit() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false"})
    return env


def checked(m: M.Measured, what: str) -> M.Measured:
    if m.returncode != 0:
        raise SystemExit(f"{what} failed (exit {m.returncode}):\n{m.stderr[-3000:]}\n{m.stdout[-2000:]}")
    return m


# -- persona stores -----------------------------------------------------------------

# Bumped when what `persona vector import` stores changes (2: W_ft blobs instead of float32
# deltas, and verified-blob records), so an older benchmark store is rebuilt, never reused.
STORE_LAYOUT = 2


def store_dir(size: str) -> Path:
    return bench_dir() / "stores" / size


def ensure_store(size: str, ckpt: Path) -> dict:
    """Import the base and vectors once per size; returns the timed imports (recorded when made)."""
    store = store_dir(size)
    marker = store / "bench-imports.json"
    ckpt_marker = json.loads((ckpt / ".complete").read_text())
    if marker.is_file():
        data = json.loads(marker.read_text())
        if data.get("checkpoints") == ckpt_marker and data.get("layout") == STORE_LAYOUT:
            data["reused"] = True
            return data
    if store.exists():
        shutil.rmtree(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    env = env_persona(store)
    checked(M.run_measured([str(PERSONA), "init", str(store)], env=env), "persona init")
    imports = []
    steps = [("base", ["base", "import", str(ckpt / "base"), "--name", "base"])]
    steps += [(v, ["vector", "import", v, "--checkpoint", str(ckpt / v)]) for v in ALPHAS]
    if (ckpt / "lora1").is_dir():
        steps += [(v, ["vector", "import", v, "--adapter", str(ckpt / v)]) for v in LORA_ALPHAS]
    for name, argv in steps:
        M.evict([ckpt / (name if name != "base" else "base")])
        M.wait_idle(log=log)
        m = checked(M.run_measured([str(PERSONA), *argv], env=env), f"persona {' '.join(argv)}")
        log(f"  import {size} {name}: {m.wall_s:.1f}s, peak RSS {m.peak_rss / GB:.2f} GB, "
            f"anon {m.peak_anon / GB:.2f} GB")
        imports.append({"name": name, "kind": argv[0], **m.to_json()})
    data = {"checkpoints": ckpt_marker, "layout": STORE_LAYOUT, "imports": imports, "store_bytes": _du(store / "objects"),
            "made": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    M.dump_json(marker, data)
    data["reused"] = False
    return data


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in M.files_under([path]))


def _object_files(objects: Path) -> set[Path]:
    return {p for p in objects.rglob("*") if p.is_file()}


def fresh_store_copy(size: str, tag: str) -> Path:
    """A copy of the size's store (refs, logs, database) sharing its objects folder through a symlink.

    Not hard links: linking changes an inode's ctime, and persona re-hashes a
    blob whose file identity changed since it was verified (store/verify_cache.py),
    which a user's store never sees between two merges. ``drop_new_objects``
    removes what the run added.
    """
    src = store_dir(size)
    dst = bench_dir() / "work" / f"store-{size}-{tag}"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    (dst / "objects").symlink_to(src / "objects", target_is_directory=True)
    _BEFORE[dst] = _object_files(src / "objects")
    for item in src.iterdir():
        if item.name == "objects":
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name, symlinks=True)
        else:
            shutil.copy2(item, dst / item.name)
    return dst


_BEFORE: dict[Path, set[Path]] = {}


def drop_store_copy(dst: Path) -> None:
    """Delete the copy and every object its runs added to the shared objects folder."""
    objects = (dst / "objects").resolve()
    for path in _object_files(objects) - _BEFORE.pop(dst, set()):
        path.unlink(missing_ok=True)
    for tmp in (objects / "incoming").glob("*") if (objects / "incoming").is_dir() else []:
        tmp.unlink(missing_ok=True)
    shutil.rmtree(dst)


def persona_recipe(task: str, seed: int) -> str:
    method = "ties" if task == "ties" else "task_arithmetic"
    alphas = LORA_ALPHAS if task == "lora" else ALPHAS
    lines = ["base: base", f"method: {method}", "lambda: 1.0", f"density: {DENSITY if task == 'ties' else 1.0}",
             f"seed: {seed}", "dtype: bfloat16", "vectors:"]
    for name, alpha in alphas.items():
        lines += [f"  - name: {name}", f"    alpha: {alpha}"]
    return "\n".join(lines) + "\n"


# -- mergekit -------------------------------------------------------------------------

def mergekit_config(task: str, ckpt: Path) -> str:
    base = ckpt / "base"
    if task == "lora":
        models = [(f"{base}+{ckpt / name}", alpha) for name, alpha in LORA_ALPHAS.items()]
    else:
        models = [(str(ckpt / name), alpha) for name, alpha in ALPHAS.items()]
    method = "ties" if task == "ties" else "task_arithmetic"
    lines = [f"merge_method: {method}", f"base_model: {base}", "models:"]
    for path, alpha in models:
        params = f"weight: {alpha}" + (f", density: {DENSITY}" if task == "ties" else "")
        lines += [f"  - model: {path}", f"    parameters: {{{params}}}"]
    lines += ["parameters: {normalize: false, int8_mask: false, lambda: 1.0}",
              "dtype: bfloat16", "out_dtype: bfloat16"]
    return "\n".join(lines) + "\n"


# -- tensors for the correctness checks ------------------------------------------------

def _weight_files(model_dir: Path) -> dict[str, Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        wm = json.loads(index.read_text())["weight_map"]
        return {k: model_dir / v for k, v in wm.items()}
    out = {}
    from safetensors import safe_open

    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as handle:
            out.update(dict.fromkeys(handle.keys(), f))
    return out


def load_tensors(model_dir: Path, names: list[str]) -> dict:
    from safetensors import safe_open

    files = _weight_files(model_dir)
    out = {}
    for name in names:
        with safe_open(str(files[name]), "pt") as handle:
            out[name] = handle.get_tensor(name)
    return out


def check_names(spec: MC.Spec) -> list[str]:
    mid = spec.layers // 2
    return ["model.layers.0.self_attn.q_proj.weight", f"model.layers.{mid}.mlp.down_proj.weight",
            f"model.layers.{spec.layers - 1}.self_attn.v_proj.weight", "model.norm.weight",
            "model.embed_tokens.weight"]


def _ulps(x, y, ref=None):
    """|x - y| in bf16 ulps of the largest magnitude among x, y and ``ref`` (0 where all are 0).

    ``ref`` is the base weight: where a merge cancels the base to almost zero,
    the ulp of the result is meaningless and the scale of the operands is what
    rounding errors are made at.
    """
    import torch

    xf, yf = x.float(), y.float()
    big = torch.maximum(xf.abs(), yf.abs())
    if ref is not None:
        big = torch.maximum(big, ref.float().abs())
    _, exp = torch.frexp(big)  # big = m * 2**exp, m in [0.5, 1)
    ulp = torch.ldexp(torch.ones_like(big), exp - 8)  # bf16 keeps 8 significant bits
    return torch.where(big > 0, (xf - yf).abs() / ulp, torch.zeros_like(big))


def compare_outputs(a_dir: Path, b_dir: Path, names: list[str], base_dir: Path) -> dict:
    """Max |a - b|, max ulp distance (bf16, at the scale of the base weight) and the fraction
    of entries that differ, over ``names``."""
    a, b, w = load_tensors(a_dir, names), load_tensors(b_dir, names), load_tensors(base_dir, names)
    per, n_total, n_diff, max_abs, max_ulp, max_rel, n_within = {}, 0, 0, 0.0, 0, 0.0, 0
    for name in names:
        x, y = a[name], b[name]
        diff = (x.float() - y.float()).abs()
        ulp = _ulps(x, y, w[name])
        n_within += int((_ulps(x, y) <= 1).sum())  # at most 1 ulp of the output value
        d = int((diff > 0).sum())
        mx = float(diff.max())
        scale = float(y.float().abs().max()) or 1.0
        per[name] = {"max_abs": mx, "max_ulp": float(ulp.max()), "frac_differ": d / x.numel(),
                     "max_abs_over_max_value": mx / scale}
        n_total += x.numel()
        n_diff += d
        max_abs = max(max_abs, mx)
        max_ulp = max(max_ulp, float(ulp.max()))
        max_rel = max(max_rel, mx / scale)
        del diff, ulp
    return {"tensors": names, "max_abs": max_abs, "max_ulp": max_ulp, "frac_differ": n_diff / n_total,
            "frac_within_1ulp_of_output": n_within / n_total,
            "max_abs_over_max_value": max_rel, "per_tensor": per, "dtype": str(a[names[0]].dtype)}


def ties_reference(ckpt: Path, out_dir: Path, name: str) -> dict:
    """DESIGN.md section 4's TIES for one tensor, by a plain stable sort, against persona's output.

    k = ceil(density * n) largest |alpha_i * t_i| (ties: lowest index), sum
    election, disjoint mean, lambda 1, float32, cast once to bf16.
    """
    import torch

    base = load_tensors(ckpt / "base", [name])[name].float().reshape(-1)
    acc_pos = torch.zeros_like(base)
    acc_neg = torch.zeros_like(base)
    cnt_pos = torch.zeros_like(base)
    cnt_neg = torch.zeros_like(base)
    n = base.numel()
    k = math.ceil(DENSITY * n)
    for v, alpha in ALPHAS.items():
        s = (load_tensors(ckpt / v, [name])[name].float().reshape(-1) - base) * alpha
        order = torch.sort(s.abs(), descending=True, stable=True).indices[:k]
        kept = torch.zeros_like(s)
        kept[order] = s[order]
        acc_pos += kept.clamp(min=0)
        acc_neg += (-kept).clamp(min=0)
        cnt_pos += (kept > 0).float()
        cnt_neg += (kept < 0).float()
    e = acc_pos >= acc_neg
    m = torch.where(e, acc_pos / cnt_pos.clamp(min=1), -acc_neg / cnt_neg.clamp(min=1))
    ref = (base + m).to(torch.bfloat16)
    got = load_tensors(out_dir, [name])[name].reshape(-1)
    diff = (ref.float() - got.float()).abs()
    return {"tensor": name, "max_abs": float(diff.max()), "frac_differ": float((diff > 0).float().mean()),
            "max_ulp": float(_ulps(ref, got).max())}


# -- the floor ---------------------------------------------------------------------------

def input_paths(ckpt: Path, task: str) -> list[Path]:
    names = ["base", *(LORA_ALPHAS if task == "lora" else ALPHAS)]
    return [ckpt / n for n in names]


def weight_bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for f in M.files_under(paths) if f.suffix == ".safetensors")


def measure_bandwidth(ckpt: Path, out_bytes: int, work: Path) -> dict:
    paths = input_paths(ckpt, "ties")
    M.evict(paths)
    M.wait_idle(log=log)
    cold_b, cold_s = M.read_files(paths)
    warm_b, warm_s = M.read_files(paths)
    M.evict(paths)
    w_b, w_s = M.write_bandwidth(work, out_bytes)
    mem = M.memory_bandwidth()
    bw = {"read_cold_gbps": cold_b / cold_s / GB, "read_warm_gbps": warm_b / warm_s / GB,
          "write_fsync_gbps": w_b / w_s / GB, "read_bytes": cold_b, "write_bytes": w_b, **mem}
    log(f"  bandwidth: read cold {bw['read_cold_gbps']:.2f} GB/s, page cache {bw['read_warm_gbps']:.2f} GB/s, "
        f"write+fsync {bw['write_fsync_gbps']:.2f} GB/s, memory copy {mem['copy_gbps']:.1f} GB/s")
    return bw


def floor_for(read_bytes: int, write_bytes: int, bw: dict) -> dict:
    cold = read_bytes / (bw["read_cold_gbps"] * GB) + write_bytes / (bw["write_fsync_gbps"] * GB)
    warm = read_bytes / (bw["read_warm_gbps"] * GB) + write_bytes / (bw["write_fsync_gbps"] * GB)
    return {"read_bytes": read_bytes, "write_bytes": write_bytes, "floor_cold_s": cold, "floor_warm_s": warm}


# -- one timed run of each tool -------------------------------------------------------------

def run_persona(size: str, task: str, ckpt: Path, rep: int, keep_output: Path | None) -> list[dict]:
    tag = f"{task}-r{rep}"
    store = fresh_store_copy(size, tag)
    work = store.parent
    recipe = work / f"recipe-{size}-{tag}.yaml"
    seed = int(time.time()) % 100000 + rep  # a recipe never merged before: no cache hit by accident
    recipe.write_text(persona_recipe(task, seed))
    out = keep_output or (work / f"persona-out-{size}-{tag}")
    if out.exists():
        shutil.rmtree(out)
    env = env_persona(store)
    rows = []
    M.evict([(store / "objects").resolve()])
    M.wait_idle(log=log)
    m = checked(M.run_measured([str(PERSONA), "merge", "-f", str(recipe), "-m", f"bench {tag}", "--json"],
                               env=env), f"persona merge ({size} {task})")
    info = json.loads(m.stdout)["build"]
    if info.get("cached"):
        raise SystemExit("persona merge hit its build cache: the benchmark would time nothing")
    rows.append({"phase": "merge", **m.to_json(), "merged_tensors": info["merged_tensors"],
                 "reused_tensors": info["reused_tensors"]})
    m = checked(M.run_measured([str(PERSONA), "build", "-o", str(out), "--json"], env=env),
                f"persona build ({size} {task})")
    rows.append({"phase": "build", **m.to_json()})
    m = checked(M.run_measured([str(PERSONA), "merge", "-f", str(recipe), "-m", f"bench {tag} again", "--json"],
                               env=env), "persona merge (cache hit)")
    if not json.loads(m.stdout)["build"].get("cached"):
        raise SystemExit("the second persona merge of the same recipe did not hit the build cache")
    rows.append({"phase": "cache_hit", **m.to_json()})
    # The one-pass path: a recipe committed but never merged, built straight to a directory
    # (persona build merges it into the store and writes the shards from the same tensors).
    recipe2 = work / f"recipe-{size}-{tag}-one-pass.yaml"
    recipe2.write_text(persona_recipe(task, seed + 50000))
    out2 = work / f"persona-out-{size}-{tag}-one-pass"
    if out2.exists():
        shutil.rmtree(out2)
    M.evict([(store / "objects").resolve()])
    M.wait_idle(log=log)
    c = checked(M.run_measured([str(PERSONA), "commit", "-f", str(recipe2), "-m", f"bench {tag} one pass"],
                               env=env), "persona commit")
    b = checked(M.run_measured([str(PERSONA), "build", "-o", str(out2), "--json"], env=env),
                f"persona build, one pass ({size} {task})")
    if json.loads(b.stdout)["build"].get("cached"):
        raise SystemExit("the one-pass build found a cached merge: the benchmark would time nothing")
    cj, bj = c.to_json(), b.to_json()
    rows.append({"phase": "one_pass", **bj, "wall_s": cj["wall_s"] + bj["wall_s"], "cpu_s": cj["cpu_s"] + bj["cpu_s"],
                 "peak_rss_bytes": max(cj["peak_rss_bytes"], bj["peak_rss_bytes"]),
                 "peak_anon_bytes": max(cj["peak_anon_bytes"], bj["peak_anon_bytes"]),
                 "foreign_cpu_s": cj["foreign_cpu_s"] + bj["foreign_cpu_s"]})
    shutil.rmtree(out2, ignore_errors=True)
    drop_store_copy(store)
    if keep_output is None:
        shutil.rmtree(out, ignore_errors=True)
    return rows


def run_mergekit(size: str, task: str, ckpt: Path, rep: int, keep_output: Path | None) -> list[dict]:
    tag = f"{task}-r{rep}"
    work = bench_dir() / "work"
    work.mkdir(parents=True, exist_ok=True)
    config = work / f"mergekit-{size}-{tag}.yml"
    config.write_text(mergekit_config(task, ckpt))
    out = keep_output or (work / f"mergekit-out-{size}-{tag}")
    cache = work / f"lora-cache-{size}-{tag}"
    for d in (out, cache):
        if d.exists():
            shutil.rmtree(d)
    argv = [str(mergekit_venv() / "bin" / "mergekit-yaml"), str(config), str(out), "--no-copy-tokenizer",
            "--quiet"]
    if task == "lora":
        argv += ["--lora-merge-cache", str(cache)]
    M.evict(input_paths(ckpt, task))
    M.wait_idle(log=log)
    m = checked(M.run_measured(argv, env=env_mergekit()), f"mergekit ({size} {task})")
    shutil.rmtree(cache, ignore_errors=True)
    if keep_output is None:
        shutil.rmtree(out, ignore_errors=True)
    return [{"phase": "merge", **m.to_json()}]


# -- summary ------------------------------------------------------------------------------

def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(runs: list[dict], floors: dict) -> list[dict]:
    """Median per (size, task, tool, phase) over repeats; persona's merge+build is summed per repeat."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["size"], r["task"], r["tool"], r["phase"]), []).append(r)
    # merge+build per repeat
    for (size, task, tool, phase), rs in list(groups.items()):
        if tool == "persona" and phase == "merge":
            builds = {b["repeat"]: b for b in groups.get((size, task, tool, "build"), [])}
            both = []
            for r in rs:
                b = builds.get(r["repeat"])
                if b:
                    both.append({"wall_s": r["wall_s"] + b["wall_s"], "cpu_s": r["cpu_s"] + b["cpu_s"],
                                 "peak_rss_bytes": max(r["peak_rss_bytes"], b["peak_rss_bytes"]),
                                 "peak_anon_bytes": max(r["peak_anon_bytes"], b["peak_anon_bytes"]),
                                 "foreign_cpu_s": r["foreign_cpu_s"] + b["foreign_cpu_s"], "repeat": r["repeat"]})
            groups[(size, task, tool, "merge+build")] = both
    rows = []
    for (size, task, tool, phase), rs in groups.items():
        rows.append({"size": size, "task": task, "tool": tool, "phase": phase, "n": len(rs),
                     "wall_s": _median([r["wall_s"] for r in rs]),
                     "wall_all_s": [round(r["wall_s"], 2) for r in rs],
                     "cpu_s": _median([r["cpu_s"] for r in rs]),
                     "peak_rss_gb": _median([r["peak_rss_bytes"] for r in rs]) / GB,
                     "peak_anon_gb": _median([r["peak_anon_bytes"] for r in rs]) / GB,
                     "foreign_cores_max": max((r["foreign_cpu_s"] / r["wall_s"] for r in rs if r["wall_s"] > 0),
                                              default=0.0)})
    by_key = {(r["size"], r["task"], r["tool"], r["phase"]): r for r in rows}
    for r in rows:
        mk = by_key.get((r["size"], r["task"], "mergekit", "merge"))
        if mk and r["phase"] not in ("cache_hit", "build"):
            r["speedup_vs_mergekit"] = mk["wall_s"] / r["wall_s"]
            r["anon_vs_mergekit"] = r["peak_anon_gb"] / mk["peak_anon_gb"]
        fl = floors.get(f"{r['size']}/{r['task']}")
        if fl and r["phase"] != "cache_hit":
            r["vs_floor_cold"] = r["wall_s"] / fl["floor_cold_s"]
            r["vs_floor_warm"] = r["wall_s"] / fl["floor_warm_s"]
    order = {"ties": 0, "ta": 1, "lora": 2}
    tools = {"mergekit": 0, "persona": 1}
    phases = {"merge": 0, "build": 1, "merge+build": 2, "one_pass": 3, "cache_hit": 4}
    rows.sort(key=lambda r: (r["size"], order[r["task"]], tools[r["tool"]], phases[r["phase"]]))
    return rows


TARGETS = {"ties": 5.0, "ta": 1.5, "lora": 10.0}


def targets(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        if (r["tool"] != "persona" or r["phase"] not in ("merge", "merge+build", "one_pass")
                or "speedup_vs_mergekit" not in r):
            continue
        t = {"size": r["size"], "task": r["task"], "phase": r["phase"],
             "speedup": r["speedup_vs_mergekit"], "speedup_target": TARGETS[r["task"]],
             "speed_met": r["speedup_vs_mergekit"] >= TARGETS[r["task"]]}
        if r["task"] in ("ties", "ta"):
            t.update({"anon_ratio": r["anon_vs_mergekit"], "anon_met": r["anon_vs_mergekit"] <= 1 / 3,
                      "vs_floor_cold": r.get("vs_floor_cold"), "floor_met": (r.get("vs_floor_cold") or 99) <= 2.0})
        out.append(t)
    return out


def _phase_label(tool: str, phase: str) -> str:
    if tool == "mergekit":
        return "mergekit-yaml (ckpt -> HF dir)"
    return {"merge": "persona merge (store -> store)", "build": "persona build (store -> HF dir)",
            "merge+build": "persona merge + build",
            "one_pass": "persona commit + build (one pass: recipe -> store + HF dir)",
            "cache_hit": "persona merge, cache hit"}[phase]


def markdown(result: dict) -> str:
    rows, floors, bw = result["summary"], result["floors"], result["bandwidth"]
    lines = [
        "# Merge benchmark: persona vs mergekit vs the I/O floor",
        "",
        f"Run {result['started']} on {result['machine'].get('cpu', '?')}, {result['machine']['cores']} cores, "
        f"{result['machine'].get('mem_gb', '?')} GB RAM; persona {result['machine']['persona_git']}, "
        f"torch {result['machine']['torch']}, mergekit {result['machine']['mergekit']} "
        f"(torch {result['machine']['mergekit_torch']}). Median of the alternating repeats (n per row in "
        "merge.json); every run starts with its inputs evicted from the page cache. "
        "Peak RSS counts mmap'd input pages; peak anon (RssAnon) is the memory the merge holds.",
        "",
        "| size | task | tool | n | wall s | CPU s | peak RSS GB | peak anon GB | speed vs mergekit "
        "| anon vs mergekit | vs floor (cold) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sp = f"{r['speedup_vs_mergekit']:.2f}x" if "speedup_vs_mergekit" in r else ""
        an = f"{r['anon_vs_mergekit']:.2f}" if "anon_vs_mergekit" in r else ""
        fl = f"{r['vs_floor_cold']:.1f}x" if "vs_floor_cold" in r else ""
        flag = " *" if r["foreign_cores_max"] > result["args"].get("max_foreign", 0.5) else ""
        lines.append(f"| {r['size']} | {TASK_TITLES[r['task']]} | {_phase_label(r['tool'], r['phase'])} | "
                     f"{r['n']} | {r['wall_s']:.1f}{flag} | {r['cpu_s']:.1f} | {r['peak_rss_gb']:.2f} | {r['peak_anon_gb']:.2f} | {sp} | {an} | {fl} |")
    for key, fl in floors.items():
        size, task = key.split("/")
        lines.append(f"| {size} | {TASK_TITLES[task]} | floor: {fl['read_bytes'] / GB:.2f} GB read + "
                     f"{fl['write_bytes'] / GB:.2f} GB written | | {fl['floor_cold_s']:.1f} (page cache: "
                     f"{fl['floor_warm_s']:.1f}) | | | | | | 1.0x |")
    lines += ["", "Imports into the store (one-time per model; persona only):", "",
              "| size | what | wall s | peak RSS GB | peak anon GB |", "|---|---|---:|---:|---:|"]
    for size, imp in result["imports"].items():
        note = " (timed when the store was built)" if imp.get("reused") else ""
        for i in imp["imports"]:
            lines.append(f"| {size} | {i['kind']} import {i['name']}{note} | {i['wall_s']:.1f} | "
                         f"{i['peak_rss_bytes'] / GB:.2f} | {i['peak_anon_bytes'] / GB:.2f} |")
    lines += ["", "Bandwidth measured in this run (GB/s):", ""]
    for size, b in bw.items():
        lines.append(f"- {size} inputs: read cold {b['read_cold_gbps']:.2f}, from page cache "
                     f"{b['read_warm_gbps']:.2f}, write + fsync {b['write_fsync_gbps']:.2f}; memory copy "
                     f"{b['copy_gbps']:.1f}, read {b['read_gbps']:.1f}")
    lines += ["", "Targets (persona vs mergekit, same run; anon = peak RssAnon; floor = cold floor):", ""]
    for t in result["targets"]:
        parts = [f"speed {t['speedup']:.2f}x (target {t['speedup_target']:g}x: "
                 f"{'met' if t['speed_met'] else 'NOT met'})"]
        if "anon_ratio" in t:
            parts.append(f"anon {t['anon_ratio']:.2f} of mergekit's (target <= 0.33: "
                         f"{'met' if t['anon_met'] else 'NOT met'})")
            parts.append(f"{t['vs_floor_cold']:.1f}x the floor (target <= 2: {'met' if t['floor_met'] else 'NOT met'})")
        lines.append(f"- {t['size']} {TASK_TITLES[t['task']]}, {_phase_label('persona', t['phase'])}: "
                     + "; ".join(parts))
    if result["correctness"]:
        lines += ["", "Agreement of the outputs (bf16; a few whole tensors each):", ""]
        for key, c in result["correctness"].items():
            lines.append(f"- {key}: max |diff| {c['max_abs']:.3g} ({c['max_ulp']:.3g} bf16 ulp at the weights' scale), "
                         f"{100 * c['frac_differ']:.2f}% of entries differ"
                         + (f", {100 * (1 - c['frac_within_1ulp_of_output']):.3f}% by more than 1 ulp of the output"
                            if "frac_within_1ulp_of_output" in c else ""))
    foreign = max((r["foreign_cores_max"] for r in rows), default=0.0)
    lines += ["", f"Other load during the timed runs: at most {foreign:.2f} cores busy outside the benchmark "
              f"(load average at start {result['load_at_start']:.2f}); `*`: a run in the median had more than "
              f"{result['args'].get('max_foreign', 0.5):g} cores of other load after "
              f"{result['args'].get('retries', 0)} retries. Discarded noisy runs: "
              f"{len(result.get('discarded', []))}.", ""]
    return "\n".join(lines)


# -- profile ---------------------------------------------------------------------------------

def profile_ties(size: str = "0.5b", threads: int = 1) -> Path:
    """cProfile persona's TIES build of ``size`` in-process on a fresh store copy.

    The profiler's clock is the process's CPU time and torch runs ``threads``
    threads (default 1): other processes on the machine then barely change the
    figures (with 2 threads a descheduled thread stalls every op's barrier, so
    a wall-clock profile of a busy machine is mostly noise). Writes
    ``results/merge_profile.txt``.
    """
    ckpt = MC.ensure(size, log=log)
    ensure_store(size, ckpt)
    store = fresh_store_copy(size, "profile")
    out = RESULTS / "merge_profile.txt"
    script = f"""
import cProfile, pstats, io, time
from pathlib import Path
import torch, yaml
torch.set_num_threads({threads})
from persona.repo import Repository
from persona import recipes
from persona.porcelain.engine import build_recipe
repo = Repository.open(Path({str(store)!r}))
data = yaml.safe_load({persona_recipe('ties', 4242)!r})
rid = repo.put(recipes.resolve(repo, recipes.parse(data, 'bench')))
prof = cProfile.Profile(time.process_time)
w0, c0 = time.perf_counter(), time.process_time()
prof.enable()
res = build_recipe(repo, rid)
prof.disable()
wall, cpu = time.perf_counter() - w0, time.process_time() - c0
stats = pstats.Stats(prof)
cum = {{}}
for (f, line, fn), (cc, nc, tt, ct, callers) in stats.stats.items():
    key = (f.split('persona/')[-1] + ':' + fn) if '/persona/' in f else fn
    cum[key] = max(cum.get(key, (0, 0, 0)), (ct, tt, nc))
def c(k):
    return cum.get(k, (0.0, 0.0, 0))[0]
total = c('porcelain/engine.py:build_recipe')
sel, ties = c('merge/ties.py:trim_cuts'), c('merge/ties.py:ties')
fin = c('merge/_disjoint.py:finish_chunk')
mt = c('merge/kernel.py:merge_tensor')
parts = [
    ('top-k selection (trim_cuts: write_rows + radix passes)', sel),
    ('  coarse pass: histogram of the top 16 bits', c('merge/select.py:_coarse_hist_')),
    ('  fine pass: members of the cut bucket', c('merge/select.py:_feed_fine')),
    ('    of which _sparse_nonzero (indices of the bucket members)', c('merge/select.py:_sparse_nonzero')),
    ('  split pass: position of the last kept tie', c('merge/select.py:_feed_split')),
    ('  write_rows (alpha * delta into float32; all callers)', c('merge/terms.py:write_rows')),
    ('accumulate: SignSplit.add + finish (+ write_rows of the loop)', ties - sel - fin),
    ('finish_chunk: base + lambda * m, checks, cast to bf16', fin),
    ('engine around merge_tensor: read/verify blobs, write/hash/fsync, isfinite', total - mt),
    ('  sha256 (verify inputs + hash outputs)', c('<built-in method _hashlib.openssl_sha256>')
        + c("<method 'update' of '_hashlib.HASH' objects>")),
    ('  put_tensor (hash + write + fsync of merged blobs)', c('store/tensors.py:put_tensor')),
    ('  torch.isfinite(result).all() in the engine', c('<built-in method torch.isfinite>')),
]
print(f'persona TIES build of {size}: {{res.merged_tensors}} tensors, {{cpu:.1f}} CPU s, {{wall:.1f}} s wall, '
      f'torch threads {threads}; profiler clock: process CPU time')
print()
print('| step | CPU s | share |')
print('|---|---:|---:|')
for label, v in parts:
    print(f'| {{label}} | {{v:.1f}} | {{100 * v / total:.0f}}% |')
print()
s = io.StringIO()
pstats.Stats(prof, stream=s).sort_stats('tottime').print_stats(30)
print(s.getvalue())
"""
    M.evict([(store / "objects").resolve()])
    M.wait_idle(log=log)
    res = subprocess.run([str(PY), "-c", script], capture_output=True, text=True, env=env_persona(store),
                         cwd=str(ROOT))
    text = res.stdout + ("\n" + res.stderr[-4000:] if res.returncode else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    drop_store_copy(store)
    log(text[:4000])
    return out


# -- main --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0.5b,1.5b")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tasks", default=",".join(TASKS), help="ties,ta,lora (lora runs on 1.5b only)")
    parser.add_argument("--quiet-load", type=float, default=1.5,
                        help="wait (up to 10 min) for the 1-minute load average to drop below this first")
    parser.add_argument("--idle-wait", type=float, default=180.0,
                        help="before each timed run, wait up to this many seconds for other processes to go idle")
    parser.add_argument("--max-foreign", type=float, default=0.5,
                        help="a run during which other processes used more cores than this is run again")
    parser.add_argument("--retries", type=int, default=2, help="how many times a noisy run is run again")
    parser.add_argument("--append", action="store_true",
                        help="keep the other sizes/tasks of an earlier results/merge.json and add this run's")
    parser.add_argument("--setup-only", action="store_true",
                        help="build the checkpoints, the mergekit venv and the stores (timing the imports), then stop")
    parser.add_argument("--profile", action="store_true", help="only profile persona's TIES on 0.5b")
    parser.add_argument("--profile-threads", type=int, default=1, help="torch threads for --profile")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    tasks = args.tasks.split(",")
    for s in sizes:
        if s not in MC.SIZES:
            parser.error(f"unknown size {s}")
    for t in tasks:
        if t not in TASKS:
            parser.error(f"unknown task {t}")
    ensure_mergekit()
    M.IDLE_WAIT = args.idle_wait
    if args.profile:
        profile_ties(sizes[0] if args.sizes != parser.get_default("sizes") else "0.5b", args.profile_threads)
        return 0

    started = time.perf_counter()
    result: dict = {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "args": vars(args) | {
        "out": str(args.out), "idle_wait": args.idle_wait}, "machine": machine_info(), "imports": {}, "bandwidth": {}, "floors": {},
        "runs": [], "correctness": {}}
    if args.append and (args.out / "merge.json").is_file():
        # add this run's sizes/tasks to an earlier run's results (e.g. 1.5b after 0.5b on a busy machine)
        old = json.loads((args.out / "merge.json").read_text())
        for key in ("imports", "bandwidth", "floors", "correctness"):
            result[key] = {**old.get(key, {}), **result[key]}
        result["runs"] = [r for r in old.get("runs", []) if (r["size"], r["task"]) not in
                          {(s, t) for s in sizes for t in tasks}]
        result["discarded"] = old.get("discarded", [])
        result["earlier_runs"] = old.get("earlier_runs", []) + [
            {k: old.get(k) for k in ("started", "args", "load_at_start", "total_wall_s")}]
    ckpts = {}
    for size in sizes:
        ckpts[size] = MC.ensure(size, log=log)
        log(f"store for {size} ...")
        result["imports"][size] = ensure_store(size, ckpts[size])
    if args.setup_only:
        log(json.dumps(result["imports"], indent=1)[:4000])
        return 0
    work = bench_dir() / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    result["load_at_start"] = M.wait_quiet(args.quiet_load, log=log)
    for size in sizes:
        spec = MC.SIZES[size]
        out_bytes = spec.params() * 2
        result["bandwidth"][size] = bw = measure_bandwidth(ckpts[size], out_bytes, work)
        for task in tasks:
            if task == "lora" and not (ckpts[size] / "lora1").is_dir():
                continue
            result["floors"][f"{size}/{task}"] = floor_for(weight_bytes(input_paths(ckpts[size], task)),
                                                           out_bytes, bw)
    plan = [(size, task) for size in sizes for task in tasks
            if task != "lora" or (ckpts[size] / "lora1").is_dir()]
    tools = {"persona": run_persona, "mergekit": run_mergekit}
    for rep in range(args.repeat):
        for i, (size, task) in enumerate(plan):
            order = ["persona", "mergekit"] if (rep + i) % 2 == 0 else ["mergekit", "persona"]
            keep = {tool: (work / f"keep-{tool}-{size}-{task}") if rep == 0 else None for tool in order}
            for tool in order:
                for attempt in range(1 + args.retries):
                    rows = tools[tool](size, task, ckpts[size], rep, keep[tool])
                    noisy = max(r["foreign_cpu_s"] / max(r["wall_s"], 1e-9) for r in rows)
                    if noisy <= args.max_foreign:
                        break
                    result.setdefault("discarded", []).append(
                        {"size": size, "task": task, "tool": tool, "repeat": rep, "attempt": attempt,
                         "foreign_cores": noisy, "rows": [{k: v for k, v in r.items() if k != "argv"} for r in rows]})
                    log(f"  {tool} {size} {task}: other processes used {noisy:.2f} cores meanwhile"
                        + ("; running it again" if attempt < args.retries else "; keeping it (flagged)"))
                for row in rows:
                    row.update({"size": size, "task": task, "tool": tool, "repeat": rep})
                    row.pop("argv", None)
                    result["runs"].append(row)
                    log(f"[{rep}] {size} {task:5s} {tool:8s} {row['phase']:9s} {row['wall_s']:7.1f}s  "
                        f"RSS {row['peak_rss_bytes'] / GB:5.2f} GB  anon {row['peak_anon_bytes'] / GB:5.2f} GB  "
                        f"(other load {row['foreign_cpu_s'] / max(row['wall_s'], 1e-9):.2f} cores)")
            if rep == 0:
                names = check_names(MC.SIZES[size])
                key = f"{size}/{task}"
                result["correctness"][f"{key}: persona vs mergekit"] = compare_outputs(
                    keep["persona"], keep["mergekit"], names, ckpts[size] / "base")
                if task == "ties":
                    result["correctness"][f"{key}: persona vs DESIGN.md reference (stable sort)"] = ties_reference(
                        ckpts[size], keep["persona"], names[0])
                for d in keep.values():
                    shutil.rmtree(d, ignore_errors=True)
            result["summary"] = summarise(result["runs"], result["floors"])
            result["targets"] = targets(result["summary"])
            result["total_wall_s"] = time.perf_counter() - started
            args.out.mkdir(parents=True, exist_ok=True)
            M.dump_json(args.out / "merge.json", result)
            (args.out / "merge.md").write_text(markdown(result))
    shutil.rmtree(work, ignore_errors=True)
    log((args.out / "merge.md").read_text())
    log(f"total {time.perf_counter() - started:.0f}s; wrote {args.out / 'merge.json'} and {args.out / 'merge.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
