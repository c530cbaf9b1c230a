"""Benchmark ``persona compact`` on a synthetic 10,000-message agent session.

The session mimics a long Hermes agent run: a large system prompt, then rounds
of user request -> assistant tool call -> tool result (shell output, file
reads, some failures) -> assistant answer, with an occasional injected system
message. It is generated from a fixed seed, so every run measures the same input.

Timed: parse + validate + compact + serialise, with the approximate token
counter (no tokenizer), each run from a cold cache, best of ``--repeat`` runs. Prints a markdown table row
and writes ``benchmarks/results/compact.json``.

    .venv/bin/python benchmarks/bench_compact.py [--messages 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from persona.compact import (  # noqa: E402
    ApproxCounter,
    CompactionConfig,
    compact,
    dump_session,
    parse_session,
)
from persona.compact.refs import clear_cache  # noqa: E402
from persona.fsutil import atomic_write_bytes  # noqa: E402

WORDS = [
    "the",
    "merge",
    "keeps",
    "every",
    "vector",
    "delta",
    "weight",
    "tensor",
    "layer",
    "rank",
    "alpha",
    "sign",
    "trim",
    "elect",
    "base",
]


def _shell_output(rng: random.Random, lines: int) -> str:
    out = []
    for index in range(lines):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        out.append(f"{index:04d} src/pkg_{rng.randint(0, 40)}/mod_{rng.randint(0, 9)}.py: {words}")
    return "\n".join(out)


def make_session(n_messages: int, seed: int = 0) -> bytes:
    """A deterministic agent session of exactly ``n_messages`` messages."""
    rng = random.Random(seed)
    messages: list[dict] = [
        {
            "role": "system",
            "content": "# SOUL.md\n" + "\n".join(f"- rule {i}: be honest." for i in range(400)),
        }
    ]
    call = 0
    while len(messages) < n_messages:
        room = n_messages - len(messages)
        if room < 4:
            messages.append({"role": "user", "content": f"ping {len(messages)}"})
            continue
        messages.append({"role": "user", "content": f"Please check step {call} of the build."})
        call += 1
        call_id = f"call_{call:06d}"
        failed = rng.random() < 0.1
        name = rng.choice(["terminal", "read_file", "search_files"])
        args = (
            {"command": f"make step-{call}"}
            if name == "terminal"
            else {"path": f"src/pkg_{call % 40}/mod.py"}
        )
        messages.append(
            {
                "role": "assistant",
                "content": "Running it.",
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(args)},
                    }
                ],
            }
        )
        body = _shell_output(rng, rng.randint(5, 60))
        if failed:
            body = "Traceback (most recent call last):\n" + body + "\nRuntimeError: step failed"
        messages.append(
            {
                "role": "tool",
                "tool_call_id": call_id,
                "content": json.dumps({"output": body, "exit_code": 1 if failed else 0}),
            }
        )
        if rng.random() < 0.05 and len(messages) < n_messages:
            messages.append(
                {
                    "role": "system",
                    "content": "# Skill: debugging\nLoaded skills/debug/SKILL.md\n" + "tip\n" * 50,
                }
            )
        if len(messages) < n_messages:
            messages.append(
                {
                    "role": "assistant",
                    "content": f"Step {call} done; see https://ci.example.org/runs/{call}.",
                }
            )
    return json.dumps(messages[:n_messages]).encode()


def run(n_messages: int, repeat: int) -> dict:
    data = make_session(n_messages)
    config = CompactionConfig()
    counter = ApproxCounter()
    timings = []
    output = b""
    stats = None
    for _ in range(repeat):
        clear_cache()  # each run starts cold, like one CLI invocation
        start = time.perf_counter()
        session = parse_session(data)
        compacted, stats = compact(session, config, counter)
        output = dump_session(compacted)
        timings.append(time.perf_counter() - start)
    assert stats is not None
    return {
        "messages_before": stats.messages_before,
        "messages_after": stats.messages_after,
        "tokens_before_approx": stats.tokens_before,
        "tokens_after_approx": stats.tokens_after,
        "input_bytes": len(data),
        "output_bytes": len(output),
        "best_s": round(min(timings), 4),
        "median_s": round(sorted(timings)[len(timings) // 2], 4),
        "repeat": repeat,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        # Timings on a shared machine depend on its load: record it with them.
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "compact.json"
    )
    args = parser.parse_args()
    result = run(args.messages, args.repeat)
    print("| messages | input MB | tokens before -> after (approx) | best s | median s |")
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {result['messages_before']:,} -> {result['messages_after']:,} "
        f"| {result['input_bytes'] / 1e6:.1f} "
        f"| {result['tokens_before_approx']:,} -> {result['tokens_after_approx']:,} "
        f"| {result['best_s']:.3f} | {result['median_s']:.3f} |"
    )
    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
