"""Blobs are re-hashed only when their file changed since they last proved good (store.verify_cache)."""

from __future__ import annotations

import os

import pytest
import torch

import persona.store.object_store as object_store
from persona.errors import CorruptObject
from persona.repo import Repository
from persona.store.object_store import DiskObjectStore
from persona.store.tensors import load_tensor, put_tensor
from persona.store.verify_cache import VerifyCache


@pytest.fixture
def hashes(monkeypatch):
    """Counts the full-blob hash checks that open_blob(verify=True) makes."""
    calls: list[str] = []
    real = object_store._verify_bytes

    def counting(oid, data):
        calls.append(oid)
        return real(oid, data)

    monkeypatch.setattr(object_store, "_verify_bytes", counting)
    return calls


def _store(tmp_path, saved: dict):
    cache = VerifyCache(lambda: dict(saved), lambda records, when: saved.update(records))
    return DiskObjectStore(tmp_path / "objects", cache), cache


def _flip_keeping_mtime(path):
    st = path.stat()
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only ctime tells


def test_a_written_blob_is_not_hashed_again(tmp_path, hashes):
    store, _ = _store(tmp_path, {})
    oid = put_tensor(store, torch.arange(1000, dtype=torch.float32))
    assert torch.equal(load_tensor(store, oid, verify=True), torch.arange(1000, dtype=torch.float32))
    assert hashes == []


def test_an_unknown_blob_is_hashed_once_then_remembered(tmp_path, hashes):
    saved: dict = {}
    writer, _ = _store(tmp_path, {})
    oid = put_tensor(writer, torch.ones(64))
    reader, cache = _store(tmp_path, saved)  # another process: knows nothing yet
    load_tensor(reader, oid, verify=True)
    load_tensor(reader, oid, verify=True)
    assert hashes == [oid]
    cache.flush()
    assert oid in saved
    third, _ = _store(tmp_path, saved)  # a later command reads the records back
    load_tensor(third, oid, verify=True)
    assert hashes == [oid]


def test_an_edit_that_keeps_size_and_mtime_is_still_caught(tmp_path, hashes):
    saved: dict = {}
    store, cache = _store(tmp_path, saved)
    oid = put_tensor(store, torch.ones(64))
    cache.flush()
    _flip_keeping_mtime(store.path(oid))
    fresh, _ = _store(tmp_path, saved)
    with pytest.raises(CorruptObject, match=oid[:12]):
        load_tensor(fresh, oid, verify=True)


def test_persona_verify_always_hashes_every_time(tmp_path, hashes, monkeypatch):
    store, _ = _store(tmp_path, {})
    oid = put_tensor(store, torch.ones(8))
    monkeypatch.setenv("PERSONA_VERIFY", "always")
    load_tensor(store, oid, verify=True)
    load_tensor(store, oid, verify=True)
    assert hashes == [oid, oid]


def test_verify_false_never_consults_or_fills_the_cache(tmp_path, hashes):
    saved: dict = {}
    writer, _ = _store(tmp_path, {})
    oid = put_tensor(writer, torch.ones(8))
    reader, cache = _store(tmp_path, saved)
    load_tensor(reader, oid, verify=False)
    assert cache.flush() == 0 and hashes == []


def test_records_persist_in_the_store_database(tmp_path, hashes):
    repo, _ = Repository.init(tmp_path / "store")
    oid = put_tensor(repo.objects, torch.ones(16))
    repo.remember_verified()
    repo.close()
    again = Repository.open(tmp_path / "store")
    load_tensor(again.objects, oid, verify=True)
    assert hashes == []
    _flip_keeping_mtime(again.objects.path(oid))
    later = Repository.open(tmp_path / "store")
    with pytest.raises(CorruptObject):
        load_tensor(later.objects, oid, verify=True)
    again.close()
    later.close()


def test_gc_forgets_the_records_of_the_blobs_it_deletes(tmp_path):
    from sqlalchemy import select

    from persona.db.models import VerifiedBlobRow
    from persona.store.gc import gc

    repo, _ = Repository.init(tmp_path / "store")
    blobs = {put_tensor(repo.objects, torch.ones(4)), put_tensor(repo.objects, torch.zeros(4))}
    repo.remember_verified()

    def recorded() -> set[str]:
        return repo.db.read(lambda s: set(s.execute(select(VerifiedBlobRow.oid)).scalars()))

    assert recorded() == blobs
    for oid in blobs:
        os.utime(repo.objects.path(oid), (1, 1))  # unreachable and older than the grace period
    report = gc(repo, grace="1d")
    assert set(report.removed) == blobs and recorded() == set()
    repo.close()
