"""fsck names every kind of damage; gc keeps everything reachable or recent."""

from __future__ import annotations

import time

import pytest
import torch

from persona import recipes
from persona.porcelain import history
from persona.store import objects as obj
from persona.store.fsck import fsck, repair_index
from persona.store.gc import gc, parse_duration
from persona.store.tensors import put_tensor
from tests.storefix import toy_repo, write_recipe


@pytest.fixture
def repo2(tmp_path):
    repo = toy_repo(tmp_path)
    for i, vectors in enumerate(([("listening", 1.0)], [("listening", 1.0), ("suggesting", -0.5)])):
        path = write_recipe(tmp_path / f"r{i}.yaml", vectors)
        history.commit_recipe(repo, recipes.resolve(repo, recipes.load(path)), f"c{i}")
    return repo


def _flip(repo, oid):
    path = repo.objects.path(oid)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_clean_store_is_ok(repo2):
    report = fsck(repo2)
    assert report.ok, report.problems
    assert report.objects == len(list(repo2.objects.iter_ids()))
    assert report.db_rows > 0


def test_flipped_byte_in_any_object_is_named(repo2):
    for oid in list(repo2.objects.iter_ids()):
        _flip(repo2, oid)
        report = fsck(repo2, check_db=False)
        assert any(p.what == "corrupt" and p.id == oid for p in report.problems), oid
        _flip(repo2, oid)  # flip back
    assert fsck(repo2).ok


def test_truncated_and_missing_objects(repo2):
    head = repo2.head()
    recipe_id = repo2.commit(head).recipe
    path = repo2.objects.path(head)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:10])
    repo2.objects.delete(recipe_id)
    problems = {(p.what, p.id) for p in fsck(repo2).problems}
    assert ("corrupt", head) in problems
    # the recipe is referenced only by the (now corrupt) head commit, but the db
    # does not list recipes; the reflog still points at the head commit
    assert any(p.id == head for p in fsck(repo2).problems)


def test_missing_blob_of_a_vector(repo2):
    vector = repo2.get(repo2.vector_id("listening"), obj.Vector)
    blob = next(iter({**vector.deltas, **vector.finetuned}.values()))
    repo2.objects.delete(blob)
    report = fsck(repo2)
    assert any(p.what == "missing" and p.id == blob for p in report.problems)


def test_db_row_pointing_to_missing_object(repo2):
    from persona.db.models import CommitRow

    ghost = "e" * 64
    repo2.db.write(lambda s: s.add(CommitRow(id=ghost, recipe_id=ghost, parents=[], author="x", time=0,
                                             message="ghost")))
    report = fsck(repo2)
    assert any(p.what == "db-orphan" and p.id == ghost for p in report.problems)
    counts = repair_index(repo2)
    assert counts["commits"] == 2 and counts["vectors"] == 3
    assert fsck(repo2).ok


def test_repair_rebuilds_a_lost_database(repo2):
    from persona.repo import Repository

    repo2.close()
    (repo2.root / "persona.db").unlink()
    for extra in repo2.root.glob("persona.db-*"):
        extra.unlink()
    fresh = Repository.open(repo2.root)
    assert repair_index(fresh) == {"commits": 2, "vectors": 3, "bases": 1, "builds": 0}
    assert len(history.log(fresh)) == 2
    assert fsck(fresh).ok


def test_bad_ref_is_reported(repo2):
    (repo2.root / "refs/tags/broken").write_text("f" * 64 + "\n")
    report = fsck(repo2)
    assert any(p.what == "missing" and p.id == "f" * 64 for p in report.problems)


def test_gc_keeps_reachable_and_reflog(repo2):
    import os

    ids_before = set(repo2.objects.iter_ids())
    history.rollback(repo2, "HEAD~1")
    old = time.time() - 40 * 86400
    for oid in ids_before:
        os.utime(repo2.objects.path(oid), (old, old))
    report = gc(repo2, "14d")
    # the abandoned commit is still in the reflog, and the reflog entries are recent
    assert report.removed == []
    assert set(repo2.objects.iter_ids()) == ids_before


def test_gc_removes_unreachable_old_objects_and_dry_run_changes_nothing(repo2):
    orphan = put_tensor(repo2.objects, torch.full((10,), 7.0))
    young = repo2.put_file(b"just written by a concurrent writer")
    old = time.time() - 30 * 86400
    import os

    os.utime(repo2.objects.path(orphan), (old, old))
    dry = gc(repo2, "14d", dry_run=True)
    assert dry.removed == [orphan] and dry.bytes_freed > 40
    assert repo2.objects.has(orphan)
    real = gc(repo2, "14d")
    assert real.removed == [orphan]
    assert not repo2.objects.has(orphan) and repo2.objects.has(young)
    assert real.kept_young >= 1
    assert fsck(repo2).ok


def test_gc_expires_old_reflog_entries_only_past_grace(repo2):
    first = history.log(repo2)[-1].id
    second = repo2.head()
    history.rollback(repo2, first)
    # Age every object so only reachability protects them.
    import os

    old = time.time() - 40 * 86400
    for oid in repo2.objects.iter_ids():
        os.utime(repo2.objects.path(oid), (old, old))
    kept = gc(repo2, "14d", dry_run=True)
    assert second not in kept.removed  # reflog entry is recent
    later = gc(repo2, "14d", dry_run=True, now=time.time() + 30 * 86400)
    assert second in later.removed  # once the reflog entry passes the grace period


def test_parse_duration():
    assert parse_duration("14d") == 14 * 86400
    assert parse_duration("30m") == 1800
    from persona.errors import InvalidInput

    with pytest.raises(InvalidInput):
        parse_duration("soon")
