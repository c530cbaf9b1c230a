"""8 processes at once against one store: no lost update, no lock error, gc takes nothing in use.

Eight workers each start real CLI processes back to back for a bounded time
(``PERSONA_CONCURRENCY_SECONDS``, default 20), choosing at random (seeded by
``PERSONA_CONCURRENCY_SEED``) among ``merge -f``, ``commit -f``,
``rollback HEAD~1``, ``tag``, ``vector import`` (adapter or checkpoint) and
``gc --prune-older-than 1s``, all with ``--json``. Then:

- every command either succeeded or failed with a one-line error and a typed
  exit code (a compare-and-swap that lost a race says so); no traceback, no
  "database is locked", no internal error;
- every success is in the reflogs: its commit, rollback, tag or vector is a
  reflog line of the ref it moved, unless a gc expired that line (gc lists
  what it expires, and only lines older than its grace period that point at
  objects nothing else reaches);
- main's reflog is one unbroken chain (each line's old value is the previous
  line's new value, the last is main itself): no update was lost;
- fsck is clean and everything the refs reach is intact and indexed.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import pytest

from tests import faultkit as fk

SECONDS = float(os.environ.get("PERSONA_CONCURRENCY_SECONDS", "20"))
SEED = int(os.environ.get("PERSONA_CONCURRENCY_SEED", "7"))
WORKERS = 8
OPS = ["merge"] * 2 + ["commit"] * 2 + ["rollback"] * 2 + ["tag", "vector", "gc"]
CLEAN_EXITS = {2, 3, 4, 6}  # invalid input, not found, conflict, store error: each one line


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir, tiny_lora_adapter, tiny_lora_adapter_rslora, tiny_finetuned_dir):
    z = fk.zygote(tmp_path_factory.mktemp("zygote"))
    tpl = fk.template(z, tmp_path_factory.mktemp("template"), {
        "model": tiny_model_dir, "adapter": tiny_lora_adapter[0], "finetuned": tiny_finetuned_dir})
    return z, tpl, {"adapter_rs": tiny_lora_adapter_rslora[0], "finetuned": tiny_finetuned_dir}


def _argv(op: str, rng: random.Random, tpl: fk.Template, inputs: dict, tag: str) -> list[str]:
    if op in ("merge", "commit"):
        recipe = tpl.recipes[rng.choice(sorted(tpl.recipes))]
        return [op, "-f", str(recipe), "-m", f"{op} {tag}", "--json"]
    if op == "rollback":
        return ["rollback", "HEAD~1", "-m", tag, "--json"]
    if op == "tag":
        return ["tag", f"t{tag}", "--json"]
    if op == "vector":
        if rng.random() < 0.5:
            return ["vector", "import", f"v{tag}", "--adapter", str(inputs["adapter_rs"]), "--json"]
        return ["vector", "import", f"v{tag}", "--checkpoint", str(inputs["finetuned"]), "--rank",
                str(rng.randint(1, 6)), "--json"]
    return ["gc", "--prune-older-than", "1s", "--json"]


def test_eight_writers_and_gc_at_once(env, tmp_path):
    z, tpl, inputs = env
    store = fk.copy_store(tpl.store, tmp_path / "store")
    deadline = time.monotonic() + SECONDS
    records: list[tuple[str, list[str], fk.Result]] = []
    failures: list[BaseException] = []
    guard = threading.Lock()

    def worker(w: int) -> None:
        rng = random.Random(f"{SEED}-{w}")
        i = 0
        try:
            while time.monotonic() < deadline:
                op = rng.choice(OPS)
                argv = _argv(op, rng, tpl, inputs, f"{w}x{i}")
                result = z.run(argv, store, timeout=180)
                with guard:
                    records.append((op, argv, result))
                i += 1
        except BaseException as exc:  # surfaced below, with the others
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures

    # Every failure is a clean, typed, one-line error; nothing leaked.
    for _op, argv, result in records:  # noqa: B007 - names for the messages
        assert "database is locked" not in result.err.lower(), (argv, result.err)
        if result.code != 0:
            fk.assert_clean_error(result, " ".join(argv))
            assert result.code in CLEAN_EXITS, (argv, result.code, result.err)

    snap = fk.snapshot(store)
    expired: dict[str, list[tuple]] = {}
    for op, _cmd, result in records:
        if op == "gc" and result.code == 0:
            for e in result.json()["reflog_expired"]:
                expired.setdefault(e["ref"], []).append((e["old"], e["new"], e["time"], e["message"]))
    history = {ref: snap.reflogs.get(ref, []) + expired.get(ref, []) for ref in set(snap.reflogs) | set(expired)}

    def logged(ref: str, old: object, new: str, prefix: str) -> bool:
        return any(line[1] == new and line[3].startswith(prefix) and (old is ... or line[0] == old)
                   for line in history.get(ref, []))

    succeeded = Counter()
    for op, argv, result in records:
        if result.code != 0:
            continue
        succeeded[op] += 1
        data = result.json()
        if op == "merge":
            assert logged("refs/heads/main", ..., data["commit"]["id"], "commit: "), argv
        elif op == "commit":
            assert logged("refs/heads/main", ..., data["id"], "commit: "), argv
        elif op == "rollback":
            assert logged("refs/heads/main", data["old"], data["new"], "rollback: "), argv
        elif op == "tag":
            assert snap.refs[data["ref"]] == data["new"], argv  # tags never move
            assert logged(data["ref"], None, data["new"], "tag: "), argv
        elif op == "vector":
            ref = f"refs/vectors/{data['name']}"
            assert snap.refs[ref] == data["id"], argv
            assert logged(ref, None, data["id"], "vector import: "), argv

    # No lost update: main's history (kept lines and expired ones, in time order) is one chain.
    chain = sorted(history["refs/heads/main"], key=lambda line: line[2])
    for previous, line in zip(chain, chain[1:], strict=False):
        assert line[0] == previous[1], f"main moved from {line[0]} but was at {previous[1]}: an update was lost"
    assert chain[-1][1] == snap.refs["refs/heads/main"]

    fk.fsck_ok(z, store, "the concurrent run")
    fk.assert_refs_complete(store, "the concurrent run")
    assert succeeded["merge"] + succeeded["commit"] > 0 and succeeded["gc"] > 0 and succeeded["vector"] > 0
    removed = sum(len(r.json()["removed"]) for op, _a, r in records if op == "gc" and r.code == 0)
    print(f"\n{len(records)} concurrent commands in {SECONDS:.0f}s by {WORKERS} processes at a time: "
          f"{dict(succeeded)} succeeded, {len(records) - sum(succeeded.values())} refused cleanly "
          f"({dict(Counter(r.code for _o, _a, r in records if r.code))}); gc removed {removed} objects and "
          f"expired {sum(len(v) for v in expired.values())} reflog lines")
