"""The store-layer mechanisms the fault suites rely on, checked directly and exhaustively.

- gc can stop after any number of deletions and fsck stays clean (referrers go
  first, each index row just before its object, expired reflog lines before both);
- an object a writer reuses during a gc (it freshens it) survives, with
  everything it points to;
- reflog appends and gc's reflog expiry never lose a line to each other, and an
  append after a torn line starts a fresh line.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import torch

from persona import recipes
from persona.porcelain import history
from persona.store import gc as gc_module
from persona.store import objects as obj
from persona.store.fsck import fsck
from persona.store.refs import ReflogEntry, RefStore
from persona.store.tensors import put_tensor
from tests.storefix import toy_repo, write_recipe


def _garbage_repo(tmp_path):
    """Three commits on main, two of them rolled back; everything aged past a 1s grace period."""
    repo = toy_repo(tmp_path)
    for i, vectors in enumerate(([("listening", 1.0)], [("suggesting", -0.5)], [("warmth", 0.3)])):
        path = write_recipe(tmp_path / f"r{i}.yaml", vectors)
        history.commit_recipe(repo, recipes.resolve(repo, recipes.load(path)), f"c{i}")
    history.rollback(repo, "HEAD~2")
    # an unreferenced build-like chain: tree -> blobs
    blobs = [put_tensor(repo.objects, torch.full((3,), float(i))) for i in range(3)]
    repo.put(obj.Tree({f"t{i}": obj.TreeEntry(b, "F32", (3,)) for i, b in enumerate(blobs)}))
    old = time.time() - 86400
    for oid in repo.objects.iter_ids():
        os.utime(repo.objects.path(oid), (old, old))
    for ref in repo.refs.reflog_refs():
        path = repo.refs.log_path(ref)
        entries = repo.refs.reflog(ref)
        path.write_text("".join(
            json.dumps(ReflogEntry(e.old, e.new, e.time - 86400, e.message).to_json()) + "\n"
            for e in entries))
    return repo


def test_gc_can_stop_after_any_deletion(tmp_path, monkeypatch):
    reference = _garbage_repo(tmp_path / "ref")
    total = len(gc_module.gc(reference, "1s", dry_run=True).removed)
    assert total >= 5
    for stop in range(total + 1):
        repo = _garbage_repo(tmp_path / f"s{stop}")
        deleted = []
        real_delete = repo.objects.delete

        def delete(oid, deleted=deleted, stop=stop, real_delete=real_delete):
            if len(deleted) == stop:
                raise KeyboardInterrupt  # as a kill would: nothing after this runs
            real_delete(oid)
            deleted.append(oid)

        monkeypatch.setattr(repo.objects, "delete", delete)
        if stop < total:
            with pytest.raises(KeyboardInterrupt):
                gc_module.gc(repo, "1s")
        else:
            gc_module.gc(repo, "1s")
        report = fsck(repo)
        assert report.ok, (stop, [p.message for p in report.problems])
        assert history.log(repo)  # main and its history intact


def test_gc_spares_what_a_writer_reuses_during_it(tmp_path, monkeypatch):
    repo = _garbage_repo(tmp_path)
    doomed = set(gc_module.gc(repo, "1s", dry_run=True).removed)
    trees = [oid for oid in doomed if repo.objects.kind_of(oid) == "tree"]
    assert trees
    reused = trees[0]
    children = set(repo.get(reused, obj.Tree).blob_ids())
    real_order = gc_module._referrers_first

    def order_then_reuse(repo_, doomed_):
        result = real_order(repo_, doomed_)
        assert repo_.objects.freshen(reused)  # a concurrent writer stores the same tree again
        return result

    monkeypatch.setattr(gc_module, "_referrers_first", order_then_reuse)
    report = gc_module.gc(repo, "1s")
    assert reused not in report.removed and not children & set(report.removed)
    assert repo.objects.has(reused) and all(repo.objects.has(c) for c in children)
    assert len(report.removed) == len(doomed - {reused} - children)
    assert fsck(repo).ok


def test_gc_keeps_young_objects_and_what_they_point_to(tmp_path):
    repo = _garbage_repo(tmp_path)
    old_blob = next(oid for oid in gc_module.gc(repo, "1s", dry_run=True).removed
                    if repo.objects.kind_of(oid) == "blob")
    # a writer has just stored a tree that points at an old, unreachable blob
    young = repo.put(obj.Tree({"w": obj.TreeEntry(old_blob, "F32", (3,))}))
    report = gc_module.gc(repo, "1s")
    assert young not in report.removed and old_blob not in report.removed
    assert fsck(repo).ok


def test_reflog_expiry_never_loses_a_concurrent_append(tmp_path):
    refs = RefStore(tmp_path)
    ref = "refs/heads/main"
    a, b = "a" * 64, "b" * 64
    for i in range(50):
        refs._append_log(ref, ReflogEntry(a, b, float(i), f"drop {i}"))
    stop = threading.Event()
    expired: list[ReflogEntry] = []

    def expirer():
        while not stop.is_set():
            expired.extend(refs.expire_reflog(ref, lambda e: e.message.startswith("drop")))

    def appender(w):
        for i in range(60):
            refs._append_log(ref, ReflogEntry(a, b, 1000.0 + i, f"keep {w} {i}"))
            if i % 3 == 0:
                refs._append_log(ref, ReflogEntry(a, b, 2000.0 + i, f"drop {w} {i}"))

    threads = [threading.Thread(target=expirer)] + [threading.Thread(target=appender, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join()
    stop.set()
    threads[0].join()
    expired += refs.expire_reflog(ref, lambda e: e.message.startswith("drop"))
    kept = [e.message for e in refs.reflog(ref)]
    assert sorted(kept) == sorted(f"keep {w} {i}" for w in range(4) for i in range(60))
    assert len(expired) == 50 + 4 * 20
    assert not list((tmp_path / "logs/refs/heads").glob(".*"))


def test_append_after_a_torn_line_starts_a_new_line(tmp_path):
    refs = RefStore(tmp_path)
    ref = "refs/heads/main"
    refs.update(ref, "a" * 64, expected=None, message="one")
    with open(refs.log_path(ref), "a") as handle:
        handle.write('{"old": null, "new": "bb')  # a full disk cut this line short
    refs.update(ref, "c" * 64, expected="a" * 64, message="two")
    assert [e.message for e in refs.reflog(ref)] == ["one", "two"]
    assert refs.resolve(ref) == "c" * 64
