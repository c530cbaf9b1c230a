"""The evidence behind `persona train --distill`'s defaults: one change at a time, measured on held-out data.

Each variant distils the identity section of examples/aer/SOUL.md on SmolLM2 and is measured on
data that variant never trained on:

- the held-out part of the built-in prompt set (the distillation's own held-out report: pass rate
  of the student without the section, KL to the teacher per token);
- damage: persona's general questions (persona/aer/data/general.yaml) with no system prompt, base
  against base + vector, and the KL from the base to base + vector on the base's own answers.

The demo's probes (examples/aer/probes.yaml) are never used here: they are the test set the README
reports, and tuning on them would make that report meaningless.

Variants share one store, so a variant that only changes training reuses the teacher's cached
answers (the teacher is the same; only what is done with its answers differs).

    python benchmarks/ablate_distill.py                 # every variant (about an hour on 2 cores)
    python benchmarks/ablate_distill.py --only defaults,objective-kl

Writes benchmarks/results/ablation.json and ablation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SOUL = ROOT / "examples" / "aer" / "SOUL.md"
RESULTS = ROOT / "benchmarks" / "results"

VARIANTS: dict[str, tuple[str, dict, dict]] = {
    # name: (what it tests, DistillSettings changes, TrainOptions changes)
    "defaults": ("the defaults", {}, {}),
    "objective-kl": ("objective: KL to the teacher only", {"objective": "kl"}, {}),
    "objective-sft": ("objective: cross-entropy on the teacher's answers only", {"objective": "sft"}, {}),
    "no-anchors": ("data mix: no anchor prompts", {"anchor_ratio": 0.0}, {}),
    "no-resampling": ("rejection sampling: greedy answers only (failures dropped, none resampled)",
                      {"rounds": 0}, {}),
    "no-check": ("rejection sampling: none (every greedy answer kept unless it parrots)",
                 {"keep_if": ".", "rounds": 0}, {}),
    "no-cue": ("teacher without the cue beside the question", {"cue": False}, {}),
    "lr-1e-3-80": ("lr 1e-3 and 80 steps (vs 2e-3 and 40)", {}, {"lr": 1e-3, "steps": 80}),
}


def damage(repo, base_id: str, vector_name: str) -> dict:
    """General questions without a system prompt, base vs base + vector; neutral KL."""
    from persona.aer.grid import mean_kl
    from persona.aer.probes import run_checks
    from persona.aer.runner import TransformersRunner, answer_logprobs_many
    from persona.aer.tokens import build_messages
    from persona.porcelain.aer import general_questions
    from persona.porcelain.materialise import load_causal_lm
    from persona.store import objects as obj
    from persona.train.probe_test import apply_vector

    questions = general_questions()
    chats = [build_messages(None, list(q.messages)) for q in questions]
    model, tok = load_causal_lm(repo, base_id)
    runner = TransformersRunner(model, tok, model_id="base")
    base_answers = runner.generate_many(chats, 32)
    base_lp = answer_logprobs_many(runner, list(zip(chats, base_answers, strict=True)))
    apply_vector(model, repo, repo.get(repo.vector_id(vector_name), obj.Vector))
    tuned = TransformersRunner(model, tok, model_id="tuned")
    tuned_answers = tuned.generate_many(chats, 32)
    tuned_lp = answer_logprobs_many(tuned, list(zip(chats, base_answers, strict=True)))
    kls = [mean_kl(a, b) for a, b in zip(base_lp, tuned_lp, strict=True)]
    kls = [k for k in kls if k is not None]
    return {"questions": len(questions),
            "base_passed": sum(run_checks(q, a).passed for q, a in zip(questions, base_answers, strict=True)),
            "vector_passed": sum(run_checks(q, a).passed for q, a in zip(questions, tuned_answers, strict=True)),
            "neutral_kl": sum(kls) / len(kls) if kls else None,
            "examples": [{"q": q.messages[0]["content"], "base": a, "vector": b}
                         for q, a, b in list(zip(questions, base_answers, tuned_answers, strict=True))[:6]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated variant names")
    parser.add_argument("--store", type=Path, help="reuse this store (its teacher caches) instead of a new one")
    parser.add_argument("--out", type=Path, default=RESULTS / "ablation.json")
    args = parser.parse_args()
    from persona.porcelain import models
    from persona.repo import Repository
    from persona.train.distillation import DistillSettings, train_distill
    from persona.train.porcelain import TrainOptions

    names = args.only.split(",") if args.only else list(VARIANTS)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="persona-ablate-") as tmp:
        if args.store is not None:
            repo = Repository.open(args.store)
        else:
            repo, _ = Repository.init(Path(tmp) / "store")
            models.import_base(repo, "smollm2")
        base_id = repo.base_id("smollm2")
        for name in names:
            what, settings_change, options_change = VARIANTS[name]
            print(f"== {name}: {what}", flush=True)
            began = time.perf_counter()
            result = train_distill(repo, f"ablate-{name}", SOUL, "Identity", None,
                                   replace(DistillSettings(), **settings_change),
                                   options=replace(TrainOptions(), **options_change), force=True)
            seconds = time.perf_counter() - began
            held = result.heldout or {}
            row = {"what": what, "seconds": seconds, "examples": result.examples, "steps": result.steps,
                   "selected_step": result.selected_step, "validation": result.validation,
                   "teacher": result.distill["counts"] if result.distill else None,
                   "heldout": {k: v for k, v in held.items() if k != "examples"},
                   "damage": damage(repo, base_id, f"ablate-{name}")}
            results[name] = row
            s = held.get("student_without_section", {})
            d = row["damage"]
            print(f"   held-out {s.get('passed')}/{s.get('total')}, KL {held.get('kl_student')}, general "
                  f"{d['vector_passed']}/{d['questions']} (base {d['base_passed']}), neutral KL {d['neutral_kl']}, "
                  f"{seconds:.0f}s", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| variant | held-out pass (student without the section) | KL to teacher (base: no section) | "
             "general questions (base) | neutral KL | teacher answers kept | time |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in results.items():
        h = row["heldout"]
        s = h.get("student_without_section", {})
        d = row["damage"]
        t = row["teacher"] or {}
        kl = f"{h['kl_student']:.3f} ({h['kl_base_without_section']:.3f})" if h.get("kl_student") is not None else "-"
        lines.append(f"| {name}: {row['what']} | {s.get('passed')}/{s.get('total')} | {kl} | "
                     f"{d['vector_passed']}/{d['questions']} ({d['base_passed']}) | {d['neutral_kl']:.3f} | "
                     f"{t.get('greedy', 0) + t.get('sampled', 0)} | {row['seconds'] / 60:.1f} min |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
