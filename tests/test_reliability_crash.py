"""kill -9 at injected points and at random moments: the store survives every one.

For each command (base import, vector import from an adapter and from a
checkpoint, merge, build, commit, rollback, gc, train) the harness first runs it
once on a fresh copy of a template store with ``PERSONA_FAULT_TRACE`` set: that
run gives the clean result to compare with, its duration, and the list of fault
points it passes. Then, each on a fresh copy, the command is killed with
SIGKILL at a chosen point (``PERSONA_FAULT=<point>:<n>``: the first and last hit
of every point, then seeded random hits) and after seeded random delays spread
over its duration. After every kill:

- ``persona fsck --json`` is clean (through the CLI);
- every ref reaches a complete graph of intact objects;
- nothing that existed before is lost or changed: objects reachable from any
  ref or reflog entry, refs the command does not move, index rows, reflog lines;
- re-running the command succeeds, fsck is clean again, the index covers
  everything the refs reach, and the result is the clean run's result.

Bounded for CI: ``PERSONA_CRASH_KILLS=<injected>,<random>`` per command
(default 6,2, train 3,1); ``PERSONA_CRASH_SEED`` picks the points and delays.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import faultkit as fk

SEED = int(os.environ.get("PERSONA_CRASH_SEED", "20261122"))
INJECTED, RANDOM_DELAYS = (int(x) for x in os.environ.get("PERSONA_CRASH_KILLS", "6,2").split(","))
TRAIN_DATA = [
    ("Hello there", "Hello! How can I help you today? I am here to listen."),
    ("I had a hard day.", "Thank you for sharing that with me. It sounds difficult."),
    ("What should I do?", "Listening means reflecting back what you heard."),
    ("Tell me a fact.", "The quick brown fox jumps over the lazy dog."),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir, tiny_model_dir_b, tiny_lora_adapter, tiny_lora_adapter_rslora,
        tiny_finetuned_dir):
    work = tmp_path_factory.mktemp("crash")
    z = fk.zygote(tmp_path_factory.mktemp("zygote"))
    tpl = fk.template(z, tmp_path_factory.mktemp("template"), {
        "model": tiny_model_dir, "adapter": tiny_lora_adapter[0], "finetuned": tiny_finetuned_dir})
    data = work / "listening.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in TRAIN_DATA))
    inputs = {"model_b": tiny_model_dir_b, "adapter_rs": tiny_lora_adapter_rslora[0],
              "finetuned": tiny_finetuned_dir, "data": data}
    return z, tpl, inputs, work


@dataclass
class Case:
    argv: Callable[[fk.Template, dict, Path], list[str]]  # (template, inputs, scratch dir)
    moves: tuple[str, ...] = ()  # refs the command may change
    gc: bool = False
    # Commands that refuse a taken name up front (base import, train) answer a re-run with
    # "already exists" once the killed run's ref landed; the re-run then adds --force.
    refuses_taken_name: bool = False
    injected: int = INJECTED
    delays: int = RANDOM_DELAYS


CASES = {
    "base-import": Case(lambda t, i, d: ["base", "import", str(i["model_b"]), "--name", "other"],
                        ("refs/bases/other",), refuses_taken_name=True),
    "vector-import-adapter": Case(lambda t, i, d: ["vector", "import", "polite", "--adapter", str(i["adapter_rs"])],
                                  ("refs/vectors/polite",)),
    "vector-import-checkpoint": Case(lambda t, i, d: ["vector", "import", "tuned_lr", "--checkpoint",
                                                      str(i["finetuned"]), "--rank", "4"],
                                     ("refs/vectors/tuned_lr",)),
    "merge": Case(lambda t, i, d: ["merge", "-f", str(t.recipes["dare"]), "-m", "dare", "--json"],
                  ("refs/heads/main",)),
    "build": Case(lambda t, i, d: ["build", "HEAD~1", "-o", str(d / "out"), "--force", "--json"]),
    "commit": Case(lambda t, i, d: ["commit", "-f", str(t.recipes["tuned"]), "-m", "more tuned", "--json"],
                   ("refs/heads/main",)),
    # to a fixed commit (the first), so a re-run after a kill that came too late still has somewhere to go
    "rollback": Case(lambda t, i, d: ["rollback", t.notes["first"][:12], "-m", "undo", "--json"],
                     ("refs/heads/main",)),
    "gc": Case(lambda t, i, d: ["gc", "--prune-older-than", "1s", "--json"], gc=True),
    "train": Case(lambda t, i, d: ["train", "warm", "--data", str(i["data"]), "--steps", "2", "--rank", "2",
                                   "--batch-size", "2", "--max-length", "64", "--checkpoint-every", "1",
                                   "--device", "cpu", "--mixed-precision", "no", "--json"],
                  ("refs/vectors/warm",), refuses_taken_name=True, injected=min(INJECTED, 3),
                  delays=min(RANDOM_DELAYS, 1)),
}


def _plan(trace: list[str], budget: int, rng: random.Random) -> list[tuple[str, int]]:
    """First and last hit of every point, then random hits, up to ``budget`` kill points."""
    counts = Counter(trace)
    firsts = [(name, 1) for name in dict.fromkeys(trace)]
    lasts = [(name, n) for name, n in counts.items() if n > 1]
    chosen = list(dict.fromkeys(firsts + lasts))
    rng.shuffle(chosen)
    # Keep every point's first hit ahead of the rest so a small budget still covers each point.
    chosen.sort(key=lambda p: p[1] != 1)
    points = chosen[:budget]
    pool = [(name, n) for name, total in counts.items() for n in range(2, total)]
    rng.shuffle(pool)
    for extra in pool:
        if len(points) >= budget:
            break
        if extra not in points:
            points.append(extra)
    return points


def _output_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _head(store: Path) -> tuple[str, str, tuple[str, ...]]:
    """(HEAD id, its recipe id, its parents)."""
    repo = fk._open(store)
    try:
        head = repo.head()
        commit = repo.commit(head)
        return head, commit.recipe, commit.parents
    finally:
        repo.close()


def _outcome(name: str, store: Path, scratch: Path, result: fk.Result) -> dict:
    """What a successful run of ``name`` produced, in a form two runs can be compared on."""
    snap = fk.snapshot(store)
    if name in ("base-import", "vector-import-adapter", "vector-import-checkpoint", "train"):
        ref = CASES[name].moves[0]
        return {"ref": snap.refs[ref]}
    if name in ("merge", "commit"):
        head, recipe, parents = _head(store)
        out = {"recipe": recipe}
        if name == "merge":
            out["build"] = result.json()["build"]["id"]
        return out
    if name == "build":
        return {"build": result.json()["build"]["id"], "files": _output_files(scratch / "out")}
    if name == "rollback":
        return {"head": _head(store)[0]}
    return {"objects": snap.objects, "refs": snap.refs}


def _check_rerun(name: str, clean: dict, got: dict, head_before_rerun: tuple | None, store: Path) -> None:
    if name == "rollback":
        # whatever the killed run did, main ends on the target, with the move in the reflog
        assert _head(store)[0] == clean["head"]
        assert fk.snapshot(store).reflogs["refs/heads/main"][-1][1] == clean["head"]
        return
    if name in ("merge", "commit"):
        assert _head(store)[2] == (head_before_rerun[0],), "the re-run did not commit on top of main"
    assert got == clean, f"{name}: the re-run's result differs from a clean run's"


@pytest.mark.parametrize("name", list(CASES))
def test_kill_and_recover(env, name):
    z, tpl, inputs, work = env
    case = CASES[name]
    rng = random.Random(f"{SEED}-{name}")
    folder = work / name
    folder.mkdir()

    # The clean run: result, duration and fault points.
    clean_dir = folder / "clean"
    clean_dir.mkdir()
    store = fk.copy_store(tpl.store, clean_dir / "store")
    trace_file = clean_dir / "trace"
    argv = case.argv(tpl, inputs, clean_dir)
    result = fk.ok(z.run(argv, store, env={"PERSONA_FAULT_TRACE": str(trace_file)}), name)
    trace = trace_file.read_text().split()
    clean = _outcome(name, store, clean_dir, result)
    fsck_report = fk.fsck_ok(z, store, f"clean {name}")
    assert trace, f"{name} passed no fault point"
    # Its duration, measured without the trace's file writes, spreads the random kills.
    timing_dir = folder / "timing"
    timing_dir.mkdir()
    duration = fk.ok(z.run(case.argv(tpl, inputs, timing_dir), fk.copy_store(tpl.store, timing_dir / "store")),
                     name).seconds

    kills = [("point", p) for p in _plan(trace, case.injected, rng)]
    kills += [("delay", rng.uniform(0.0, 0.8 * duration)) for _ in range(case.delays)]
    killed = named_before_kill = 0
    for index, (how, where) in enumerate(kills):
        scratch = folder / f"k{index}"
        scratch.mkdir()
        store = fk.copy_store(tpl.store, scratch / "store")
        argv = case.argv(tpl, inputs, scratch)
        before = fk.snapshot(store, reflog_cutoff=time.time() - 1 if case.gc else 0.0)
        label = f"{name} killed at {where}"
        if how == "point":
            point = f"{where[0]}:{where[1]}"
            run = z.run(argv, store, env={"PERSONA_FAULT": point})
            assert run.code == -9, f"{label}: expected SIGKILL, got {run.code}\n{run.err}"
        else:
            child = z.spawn(argv, store)
            time.sleep(max(0.0, where - (time.monotonic() - child.started)))
            fk.kill(child)
            run = z.wait(child)
            assert run.code in (0, -9), f"{label}: exit {run.code}\n{run.err}"
        killed += run.code == -9

        fk.fsck_ok(z, store, label)
        fk.assert_refs_complete(store, label, require_index=False)
        fk.assert_preserved(before, store, set(case.moves), label, expired_ok=case.gc)

        head_before_rerun = _head(store) if name in ("merge", "commit", "rollback") else None
        rerun = z.run(argv, store)
        if case.refuses_taken_name and rerun.code == 4 and "already exists" in rerun.err:
            # The killed run got as far as naming its result: the very object a clean run makes.
            assert fk.snapshot(store).refs.get(case.moves[0]) == clean["ref"], label
            named_before_kill += 1
            rerun = z.run([*argv, "--force"], store)
        fk.ok(rerun, f"re-run after {label}")
        fk.fsck_ok(z, store, f"re-run after {label}")
        fk.assert_refs_complete(store, f"re-run after {label}")
        fk.assert_preserved(before, store, set(case.moves), f"re-run after {label}", expired_ok=case.gc)
        _check_rerun(name, clean, _outcome(name, store, scratch, rerun), head_before_rerun, store)

    injected = sum(1 for how, _ in kills if how == "point")
    assert killed >= injected, f"{name}: only {killed} of {len(kills)} runs were killed"
    print(f"\n{name}: {killed} kill points survived ({injected} injected, {killed - injected} at random "
          f"delays in {duration:.2f}s; {len(set(trace))} distinct points, {len(trace)} hits; "
          f"{fsck_report['objects']} objects; {named_before_kill} re-run(s) needed --force)")


def test_real_entry_point_killed_at_injected_points(env):
    """Control: the console entry point (`python -m persona`), not the zygote, killed the same way."""
    z, tpl, inputs, work = env
    for index, (name, point) in enumerate((("merge", "ref.logged:1"), ("gc", "gc.delete:5"))):
        case = CASES[name]
        scratch = work / f"real{index}"
        scratch.mkdir()
        store = fk.copy_store(tpl.store, scratch / "store")
        argv = case.argv(tpl, inputs, scratch)
        before = fk.snapshot(store, reflog_cutoff=time.time() - 1 if case.gc else 0.0)
        run = z.wait(z.spawn_real(argv, store, env={"PERSONA_FAULT": point}), timeout=300)
        assert run.code == -9, f"{name} at {point}: exit {run.code}\n{run.err}"
        fk.fsck_ok(z, store, f"{name} at {point}")
        fk.assert_preserved(before, store, set(case.moves), f"{name} at {point}", expired_ok=case.gc)
        fk.ok(z.wait(z.spawn_real(argv, store), timeout=300), f"re-run of {name}")
        fk.fsck_ok(z, store, f"re-run of {name}")
        fk.assert_refs_complete(store, f"re-run of {name}")


def test_leftovers_of_a_crash_are_cleaned(env):
    """A killed writer leaves a temp file and a lock: fsck ignores both, the next writer breaks the
    lock at once, and gc removes temp files once they are older than its temp grace period."""
    z, tpl, inputs, work = env
    scratch = work / "leftovers"
    scratch.mkdir()
    store = fk.copy_store(tpl.store, scratch / "store")
    run = z.run(["commit", "-f", str(tpl.recipes["tuned"]), "-m", "x"], store,
                env={"PERSONA_FAULT": "ref.logged:1"})
    assert run.code == -9
    lock = store / "refs/heads/main.lock"
    assert lock.exists() and lock.read_text().startswith("pid ")
    run = z.run(["vector", "import", "polite", "--adapter", str(inputs["adapter_rs"])], store,
                env={"PERSONA_FAULT": "object.write:2"})
    assert run.code == -9
    temps = list((store / "objects").rglob(".obj.*.tmp"))
    assert temps, "a kill after writing an object's temp file leaves it"
    fk.fsck_ok(z, store, "leftovers")
    # A lock that was not broken would make this wait, then fail with "locked by another process".
    fk.ok(z.run(["commit", "-f", str(tpl.recipes["tuned"]), "-m", "after the crash"], store))
    assert not lock.exists()
    report = fk.ok(z.run(["gc", "--prune-older-than", "1s", "--json"], store)).json()
    assert report["temp_files"] == 0 and all(t.exists() for t in temps), "a fresh temp file is in use"
    old = time.time() - 7200
    for temp in temps:
        os.utime(temp, (old, old))
    report = fk.ok(z.run(["gc", "--prune-older-than", "1s", "--json"], store)).json()
    assert report["temp_files"] == len(temps) and not any(t.exists() for t in temps)
    fk.fsck_ok(z, store, "gc of leftovers")
