"""Benchmark the demo's distillation and `persona aer` on SmolLM2, quiet and with busy neighbours.

What it runs (each in a fresh store, so no cached teacher answer or model run flatters a time):

1. ``persona train identity --distill examples/aer/SOUL.md --section Identity`` with every default
   (the issue's target: under 15 minutes on 2 quiet cores), with ``--eval-pass-rate`` so the
   held-out pass rate is known at every validation: "steps to target" is the first validation
   step where 75% of the held-out questions pass;
2. the same distillation with ``--optimizer apollo`` (the teacher's answers are cached from 1, so
   only training differs): steps to the same target;
3. ``persona train style`` (defaults), ``persona merge -f recipes/timmy-soul.yaml``, then
   ``persona aer`` as the demo runs it, with an empty AER cache (target: under 2 minutes);
4. generation, the engine behind both: persona's batched, prefix-shared decoding against
   transformers' own batched ``generate`` and one chat at a time, on the same 32 teacher chats,
   side by side, quiet and with ``--contend K`` busy-loop processes, as ratios.

Steps 1-3 are timed quiet (after waiting for the machine to be idle); step 4 also under
contention, once with persona's thread sizing and once with torch's default.

    python benchmarks/bench_distill.py                  # everything (about 45 minutes)
    python benchmarks/bench_distill.py --only generate --contend 2
    python benchmarks/bench_distill.py --only aer --store demo/store   # time aer on an existing store

Results: ``benchmarks/results/distill.json`` and ``distill.md`` (the README's table).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _measure  # noqa: E402
from _measure import busy_cores, dump_json, run_measured, wait_idle  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SOUL = ROOT / "examples" / "aer" / "SOUL.md"
PROBES = ROOT / "examples" / "aer" / "probes.yaml"
RECIPE = ROOT / "recipes" / "timmy-soul.yaml"
TARGET = 0.75


def persona(*args: str) -> list[str]:
    return [sys.executable, "-m", "persona", *args]


def _env(store: Path, threads: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PERSONA_STORE": str(store), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if threads is not None:
        env["PERSONA_THREADS"] = threads
    return env


def _spin(stop: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 31 + 7) % 1_000_003


class Contention:
    """K busy-loop processes for the duration of a ``with`` block."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.stop = multiprocessing.Event()
        self.procs: list[multiprocessing.Process] = []

    def __enter__(self) -> Contention:
        for _ in range(self.k):
            p = multiprocessing.Process(target=_spin, args=(self.stop,), daemon=True)
            p.start()
            self.procs.append(p)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=10)


def timed(label: str, argv: list[str], env: dict[str, str]) -> dict:
    idle = wait_idle(log=lambda m: print(m, flush=True))
    print(f"{label}: {' '.join(argv[2:])}", flush=True)
    m = run_measured(argv, env=env, cwd=str(ROOT))
    if m.returncode != 0:
        print(m.stdout[-2000:], m.stderr[-4000:], sep="\n")
        raise SystemExit(f"{label} failed with exit code {m.returncode}")
    print(f"  {m.wall_s:.1f}s wall, {m.cpu_s:.1f}s CPU, peak RSS {m.peak_rss / 1e9:.2f} GB, "
          f"other load {m.foreign_cpu_s / max(m.wall_s, 1e-9):.2f} cores", flush=True)
    return {"label": label, **m.to_json(), "idle_before": idle,
            "other_cores": m.foreign_cpu_s / max(m.wall_s, 1e-9), "stdout": m.stdout}  # whole: --json output is parsed (callers pop it before saving)


def new_store(parent: Path) -> Path:
    store = parent / "store"
    env = _env(store)
    for argv in (persona("init", str(store)), persona("base", "import", "smollm2")):
        m = run_measured(argv, env=env, cwd=str(ROOT))
        if m.returncode != 0:
            raise SystemExit(m.stderr)
    return store


def steps_to_target(result: dict) -> int | None:
    for step, passed, total in result.get("validation_pass", []):
        if total and passed / total >= TARGET:
            return int(step)
    return None


def bench_distill(work: Path, teacher_store: Path | None = None) -> dict:
    """AdamW then APOLLO on the identity section; with ``teacher_store``, a copy of it whose cached
    teacher answers make both runs training-only (steps to target do not depend on the cache)."""
    if teacher_store is None:
        store = new_store(work)
        label = "distill identity (defaults)"
    else:
        store = work / "store"
        shutil.copytree(teacher_store, store, symlinks=True, ignore=shutil.ignore_patterns("aer"))
        label = "distill identity (defaults, cached teacher)"
    env = _env(store)

    def distill(run_label: str, name: str, *extra: str) -> dict:
        run = timed(run_label, persona("train", name, "--distill", str(SOUL), "--section", "Identity", *extra,
                                       "--eval-pass-rate", "--json"), env)
        result = json.loads(run.pop("stdout"))
        run.update(steps_to_target=steps_to_target(result), heldout=result.get("heldout"),
                   validation=result.get("validation"), validation_pass=result.get("validation_pass"))
        return run

    out: dict = {"distill_adamw": distill(label, "bench-identity")}
    try:
        import apollo_torch  # noqa: F401
    except ImportError:
        out["distill_apollo"] = {"skipped": "apollo-torch not installed (pip install 'persona[apollo]')"}
        return out
    out["distill_apollo"] = distill("distill identity (APOLLO, cached teacher)", "bench-identity-apollo",
                                    "--optimizer", "apollo")
    out["store"] = str(store)
    return out


def bench_aer(work: Path, store: Path | None) -> dict:
    if store is None:
        store = new_store(work)
        env = _env(store)
        for name, section in (("identity", "Identity"), ("style", "Style")):
            m = run_measured(persona("train", name, "--distill", str(SOUL), "--section", section), env=env,
                             cwd=str(ROOT))
            if m.returncode != 0:
                raise SystemExit(m.stderr)
        m = run_measured(persona("merge", "-f", str(RECIPE), "-m", "bench"), env=env, cwd=str(ROOT))
        if m.returncode != 0:
            raise SystemExit(m.stderr)
    else:
        copy = work / "aer-store"
        shutil.copytree(store, copy, symlinks=True, ignore=shutil.ignore_patterns("aer"))
        store = copy
    shutil.rmtree(store / "cache" / "aer", ignore_errors=True)
    env = _env(store)
    run = timed("persona aer (empty cache)", persona("aer", "--prompt", str(SOUL), "--probes", str(PROBES),
                                                     "--max-new-tokens", "32", "--json"), env)
    result = json.loads(run.pop("stdout"))
    run["aer"] = result.get("aer")
    run["dropped"] = result.get("dropped")
    run["verdicts"] = {s["name"]: s["verdict"] for s in result.get("sections", [])}
    return run


GEN_SCRIPT = r"""
import json, sys, time
import torch
from pathlib import Path
from persona.repo import Repository
from persona.porcelain.materialise import load_causal_lm
from persona.aer.sections import load_prompt
from persona.aer.tokens import build_messages
from persona.train.prompt_pool import builtin_prompts
from persona.lm.generate import greedy, encode_chats
from persona.cpu import configure_torch

mode, threads = sys.argv[1], sys.argv[2]
if threads == "persona":
    configure_torch()
repo = Repository.open(Path(sys.argv[3]))
model, tok = load_causal_lm(repo, repo.base_id("smollm2"))
doc = load_prompt(sys.argv[4])
prompts = [p for p in builtin_prompts() if p.category == "self"][:32]
chats = [build_messages(doc.text, list(p.messages)) for p in prompts]
n_new = 32
t = time.perf_counter()
if mode == "persona":
    out = greedy(model, tok, chats, n_new)
    tokens = sum(len(g.token_ids) for g in out)
elif mode == "hf-batched":
    tok.padding_side = "left"
    ids = encode_chats(tok, chats)
    width = max(map(len, ids))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    with torch.no_grad():
        gen = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False,
                             pad_token_id=pad)
    tokens = int((gen[:, width:] != pad).sum())
else:
    tokens = 0
    for chat in chats[:8]:
        ids = torch.tensor(encode_chats(tok, [chat]))
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                                 do_sample=False)
        tokens += gen.shape[1] - ids.shape[1]
seconds = time.perf_counter() - t
print(json.dumps({"mode": mode, "threads": torch.get_num_threads(), "tokens": tokens, "seconds": seconds,
                  "chats": 32 if mode != "hf-one-at-a-time" else 8}))
"""


def bench_generate(work: Path, contend: int) -> list[dict]:
    store = new_store(work)
    rows = []
    script = work / "gen.py"
    script.write_text(GEN_SCRIPT)
    for load in ([0, contend] if contend else [0]):
        for threads in (["persona", "torch-default"] if load else ["persona"]):
            for mode in ("persona", "hf-batched", "hf-one-at-a-time"):
                if load == 0:
                    wait_idle(log=lambda m: print(m, flush=True))
                with Contention(load):
                    m = run_measured([sys.executable, str(script), mode, threads, str(store), str(SOUL)],
                                     env=_env(store), cwd=str(ROOT))
                if m.returncode != 0:
                    raise SystemExit(m.stderr[-3000:])
                data = json.loads(m.stdout.strip().splitlines()[-1])
                data.update(busy_neighbours=load, thread_policy=threads, cpu_s=m.cpu_s, wall_s=m.wall_s,
                            tokens_per_s=data["tokens"] / data["seconds"], peak_rss=m.peak_rss)
                print(f"  generate {mode:17} threads={threads:13} busy={load}: "
                      f"{data['tokens_per_s']:.1f} tokens/s ({data['tokens']} tokens in {data['seconds']:.1f}s)",
                      flush=True)
                rows.append(data)
    return rows


def table(results: dict) -> str:
    lines = ["| what | wall | CPU s | peak RSS GB | other load (cores) | result |", "|---|---:|---:|---:|---:|---|"]
    for key in ("distill_adamw", "distill_apollo"):
        r = results.get(key)
        if not r or "skipped" in r:
            continue
        h = r.get("heldout") or {}
        s = h.get("student_without_section", {})
        lines.append(f"| {r['label']} | {r['wall_s'] / 60:.1f} min | {r['cpu_s']:.0f} | {r['peak_rss_bytes'] / 1e9:.2f} "
                     f"| {r['other_cores']:.2f} | held-out {s.get('passed')}/{s.get('total')}; 75% reached at step "
                     f"{r['steps_to_target']} |")
    r = results.get("aer")
    if r:
        lines.append(f"| {r['label']} | {r['wall_s'] / 60:.1f} min | {r['cpu_s']:.0f} | {r['peak_rss_bytes'] / 1e9:.2f} "
                     f"| {r['other_cores']:.2f} | dropped {', '.join(r['dropped'] or []) or '-'}; "
                     f"AER {100 * r['aer']['before']:.2f}% -> {100 * r['aer']['after']:.2f}% |")
    gen = results.get("generate") or []
    if gen:
        lines += ["", "| generation (32 chats, 32 new tokens) | busy neighbours | threads | tokens/s | vs persona |",
                  "|---|---:|---|---:|---:|"]
        for row in gen:
            ref = next(g for g in gen if g["mode"] == "persona" and g["busy_neighbours"] == row["busy_neighbours"]
                       and g["thread_policy"] == row["thread_policy"])
            lines.append(f"| {row['mode']} | {row['busy_neighbours']} | {row['thread_policy']} ({row['threads']}) | "
                         f"{row['tokens_per_s']:.1f} | {row['tokens_per_s'] / ref['tokens_per_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["distill", "aer", "generate"], action="append")
    parser.add_argument("--store", type=Path, help="time `persona aer` on this existing store (a copy), and distil "
                        "with its cached teacher answers (training only)")
    parser.add_argument("--contend", type=int, default=2, help="busy-loop processes for the contended runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "distill.json")
    parser.add_argument("--idle-wait", type=float, default=180.0,
                        help="seconds to wait at most for an idle machine before each timed run")
    args = parser.parse_args()
    _measure.IDLE_WAIT = args.idle_wait
    only = set(args.only or ["distill", "aer", "generate"])
    results: dict = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["machine"] = {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                          "busy_cores_at_start": busy_cores(), "date": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        work = Path(tmp)
        if "distill" in only:
            results.update(bench_distill(work / "distill", args.store))
        if "aer" in only:
            results["aer"] = bench_aer(work / "aer", args.store)
        if "generate" in only:
            results["generate"] = bench_generate(work / "generate", args.contend)
    results.pop("store", None)
    dump_json(args.out, results)
    (args.out.with_suffix(".md")).write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
