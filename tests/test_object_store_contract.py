"""One contract, two stores: the disk store and its in-memory twin behave alike."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
import torch

from persona.errors import CorruptObject, NotFound
from persona.ids import hash_object
from persona.store.codec import ALIGNMENT, blob_prefix
from persona.store.object_store import DiskObjectStore, MemoryObjectStore
from persona.store.tensors import load_tensor, put_tensor


@pytest.fixture(params=["disk", "memory"])
def store(request, tmp_path: Path):
    return DiskObjectStore(tmp_path / "objects") if request.param == "disk" else MemoryObjectStore()


def test_put_get_roundtrip_and_id_is_sha256_of_header_and_payload(store):
    oid = store.put("file", b"hello")
    assert oid == hashlib.sha256(b"file 5\0hello").hexdigest()
    assert store.get(oid) == ("file", b"hello")
    assert store.has(oid) and store.kind_of(oid) == "file"


def test_golden_ids_are_frozen(store):
    # If these change, every existing store breaks: never update them casually.
    assert store.put("file", b"") == "fba941a95a9a6ad74087b7acb8627e07d41d7a601513502fc21ba0df21f69f16"
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    oid = put_tensor(store, tensor)
    assert oid == "8cd63caa543c725524e9aee71c03aa652936e87d9fffcda55c2042745a91231f"
    # The same id from the documented layout, computed independently:
    header = b"PTEN1 F32 2,3"
    header += b" " * (64 - len(b"blob 80\0") - len(header) - 1) + b"\n"
    data = b"".join(struct.pack("<f", float(v)) for v in range(6))
    assert hashlib.sha256(b"blob 80\0" + header + data).hexdigest() == oid


def test_same_content_same_id_stored_once(store):
    a = store.put("recipe", b'{"x":1}')
    b = store.put("recipe", b'{"x":1}')
    assert a == b
    assert list(store.iter_ids()) == [a]


def test_kind_is_part_of_the_id(store):
    assert store.put("file", b"x") != store.put("recipe", b"x")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_tensor_roundtrip_is_bit_exact(store, dtype):
    tensor = (torch.randn(7, 5) * 100).to(dtype)
    oid = put_tensor(store, tensor)
    back = load_tensor(store, oid)
    assert back.dtype == dtype and back.shape == tensor.shape
    assert torch.equal(back.view(torch.uint8) if dtype != torch.int64 else back,
                       tensor.view(torch.uint8) if dtype != torch.int64 else tensor)


def test_scalar_and_empty_tensors(store):
    for tensor in (torch.tensor(3.5), torch.empty(0, 4)):
        back = load_tensor(store, put_tensor(store, tensor))
        assert back.shape == tensor.shape and torch.equal(back, tensor)


def test_blob_data_is_aligned_for_zero_copy():
    for shape in [(1,), (3, 7), (1000,), (2, 3, 4, 5)]:
        numel = 1
        for d in shape:
            numel *= d
        obj_header, tensor_header = blob_prefix("F32", shape, numel * 4)
        assert (len(obj_header) + len(tensor_header)) % ALIGNMENT == 0


def test_flipped_byte_is_detected(store, tmp_path):
    oid = put_tensor(store, torch.ones(16))
    if isinstance(store, DiskObjectStore):
        path = store.path(oid)
        path.chmod(0o644)
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        data = bytearray(store._raw(oid))
        data[-3] ^= 0x01
        store.corrupt_for_test(oid, bytes(data))
    with pytest.raises(CorruptObject):
        store.verify(oid)
    with pytest.raises(CorruptObject):
        store.open_blob(oid, verify=True)


def test_missing_object_is_not_found(store):
    with pytest.raises(NotFound):
        store.get("0" * 64)
    with pytest.raises(NotFound):
        store.get("not-an-id")


def test_delete(store):
    oid = store.put("file", b"bye")
    store.delete(oid)
    assert not store.has(oid)
    store.delete(oid)  # idempotent


def test_put_blob_checks_length(store):
    with pytest.raises(ValueError):
        store.put_blob("F32", (2,), [b"\0" * 4], 8)


def test_disk_objects_are_read_only_files_under_fanout(tmp_path):
    store = DiskObjectStore(tmp_path / "objects")
    oid = store.put("file", b"data")
    path = tmp_path / "objects" / oid[:2] / oid[2:]
    assert path.is_file()
    assert path.read_bytes() == b"file 4\0data"
    assert path.stat().st_mode & 0o222 == 0
    assert hash_object("file", b"data") == oid
    assert not list((tmp_path / "objects").rglob("*.tmp"))


def test_disk_load_tensor_is_a_private_mapping(tmp_path):
    store = DiskObjectStore(tmp_path / "objects")
    oid = put_tensor(store, torch.zeros(8))
    view = load_tensor(store, oid)
    view += 1  # writes stay in this process's memory
    store.verify(oid)
    assert torch.equal(load_tensor(store, oid), torch.zeros(8))
