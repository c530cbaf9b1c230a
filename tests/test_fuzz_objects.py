"""Fuzzing the object layer: decoders, the on-disk header parsers, canonical JSON.

Objects are read back from disk, where a flipped bit or a hostile file can put
anything. Whatever the bytes, decoding either succeeds with well-typed fields
(so fsck and gc can follow the edges) or raises CorruptObject (exit 5 at the
CLI, "corrupt" in fsck); never another exception. Canonical JSON, which every
object id depends on, must round-trip exactly and be independent of key order.
Bounded for CI (``PERSONA_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona import canonical
from persona.errors import CorruptObject, NotFound
from persona.ids import hash_object, object_header
from persona.store import codec
from persona.store import objects as obj
from persona.store.object_store import DiskObjectStore, MemoryObjectStore

EXAMPLES = int(os.environ.get("PERSONA_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

oids = st.one_of(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), st.text(max_size=8))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=15)
shapes = st.lists(st.integers(0, 5), max_size=3).map(tuple)

trees = st.builds(obj.Tree, st.dictionaries(st.text(max_size=10), st.builds(
    obj.TreeEntry, oids, st.sampled_from(sorted(codec.DTYPE_SIZES)), shapes), max_size=4))
bases = st.builds(obj.Base, oids, st.dictionaries(st.text(max_size=10), oids, max_size=3), st.text(max_size=10),
                  st.dictionaries(st.text(max_size=5), json_scalars, max_size=3), st.booleans())
vectors = st.builds(obj.Vector, st.sampled_from(["lora", "dense", "lowrank"]), oids,
                    st.dictionaries(st.text(max_size=8), oids, max_size=3),
                    st.dictionaries(st.text(max_size=8), st.builds(
                        obj.LoraFactorRef, oids, oids, st.floats(-1e6, 1e6)), max_size=3),
                    st.dictionaries(st.text(max_size=5), json_values, max_size=3))
recipes_ = st.builds(lambda base, vs, extra: obj.RecipeObject({**extra, "base": base, "vectors": vs}),
                     st.fixed_dictionaries({"id": oids, "name": st.text(max_size=5)}),
                     st.lists(st.fixed_dictionaries({"id": oids, "name": st.text(max_size=5),
                                                     "alpha": st.floats(-100, 100)}), max_size=3),
                     st.dictionaries(st.sampled_from(["method", "lambda", "seed"]), json_scalars, max_size=3))
commits = st.builds(obj.Commit, oids, st.lists(oids, max_size=2).map(tuple), st.text(max_size=8),
                    st.integers(0, 2**40), st.text(max_size=20))
builds = st.builds(obj.Build, oids, oids, oids, st.sampled_from(["F32", "BF16", "mixed"]))
structured = st.one_of(trees, bases, vectors, recipes_, commits, builds)


@FUZZ
@given(structured)
def test_structured_objects_round_trip(item):
    payload = item.to_payload()
    again = type(item).from_payload(payload)
    assert again == item
    assert again.to_payload() == payload
    for target in obj.referenced_ids(item.kind, payload):
        assert isinstance(target, str)


def _mutations(item_payload: bytes) -> st.SearchStrategy[bytes]:
    data = json.loads(item_payload)
    keys = sorted(data)
    return st.one_of(
        # one field replaced by anything JSON can hold
        st.tuples(st.sampled_from(keys), json_values).map(
            lambda kv: canonical.dumps({**data, kv[0]: kv[1]})),
        # one field removed, or an extra one added
        st.sampled_from(keys).map(lambda k: canonical.dumps({x: v for x, v in data.items() if x != k})),
        st.tuples(st.text(max_size=6), json_values).map(lambda kv: canonical.dumps({**data, kv[0]: kv[1]})),
        # bytes flipped or cut
        st.tuples(st.integers(0, max(0, len(item_payload) - 1)), st.integers(1, 255)).map(
            lambda pos: item_payload[: pos[0]] + bytes([item_payload[pos[0]] ^ pos[1]]) + item_payload[pos[0] + 1:]),
        st.integers(0, len(item_payload)).map(lambda n: item_payload[:n]),
    )


damaged = structured.flatmap(lambda item: st.tuples(st.just(item.kind), _mutations(item.to_payload())))
random_payloads = st.tuples(st.sampled_from(codec.KINDS), st.one_of(
    st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=8), json_values, max_size=5).map(
        lambda d: json.dumps({**d, "format": 1}).encode())))


@FUZZ
@given(st.one_of(damaged, random_payloads))
def test_decoding_damaged_objects_only_raises_corrupt_object(kind_payload):
    kind, payload = kind_payload
    try:
        decoded = obj.decode(kind, payload)
        edges = obj.referenced_ids(kind, payload)
    except CorruptObject:
        return
    assert all(isinstance(t, str) for t in edges)
    if kind in obj.STRUCTURED:
        assert isinstance(decoded, obj.STRUCTURED[kind])


def _blob_bytes(dtype: str, shape: tuple[int, ...]) -> bytes:
    length = math.prod(shape) * codec.DTYPE_SIZES[dtype]
    head, tensor_head = codec.blob_prefix(dtype, shape, length)
    return head + tensor_head + bytes(range(256)) * (length // 256) + bytes(length % 256)


blob_bytes = st.tuples(st.sampled_from(sorted(codec.DTYPE_SIZES)), shapes).map(lambda t: _blob_bytes(*t))
header_bytes = st.one_of(
    st.binary(max_size=300),
    blob_bytes,
    blob_bytes.flatmap(lambda data: st.tuples(st.integers(0, min(len(data), 140) - 1), st.integers(1, 255)).map(
        lambda pos: data[: pos[0]] + bytes([data[pos[0]] ^ pos[1]]) + data[pos[0] + 1:])),
    blob_bytes.flatmap(lambda data: st.integers(0, len(data)).map(lambda n: data[:n])),
    st.tuples(st.sampled_from([b"blob", b"tree", b"nope", b"blob\xff"]),
              st.sampled_from([b"-5", b"1e3", b"+12", b"99999999999999999999", b"\xd9\xa1", b"12 3", b""]),
              st.binary(max_size=80)).map(lambda t: t[0] + b" " + t[1] + b"\0" + t[2]),
)


@FUZZ
@given(header_bytes)
def test_header_parsers_only_raise_corrupt_object(data):
    try:
        kind, size, offset = codec.parse_object_header(data)
    except CorruptObject:
        return
    assert kind in codec.KINDS and size >= 0 and 0 < offset <= 64
    try:
        layout = codec.parse_blob_layout(data)
    except CorruptObject:
        return
    assert layout.dtype in codec.DTYPE_SIZES and all(d >= 0 for d in layout.shape)
    assert layout.data_length == layout.numel * codec.DTYPE_SIZES[layout.dtype]


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    return DiskObjectStore(tmp_path_factory.mktemp("objects"))


@settings(max_examples=max(50, EXAMPLES // 3), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(header_bytes, st.tuples(st.sampled_from(codec.KINDS), st.binary(max_size=100)).map(
    lambda t: object_header(t[0], len(t[1])) + t[1])), st.booleans())
def test_stores_only_return_what_hashes_to_its_id(disk, data, honest):
    """Bytes under an id they hash to are read back; anything else is CorruptObject, on disk and in memory."""
    oid = hashlib.sha256(data).hexdigest() if honest else hashlib.sha256(data + b"x").hexdigest()
    memory = MemoryObjectStore()
    memory.corrupt_for_test(oid, data)
    path = disk.path(oid)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.chmod(0o644)
    path.write_bytes(data)
    for store in (disk, memory):
        try:
            kind, payload = store.get(oid)
        except CorruptObject:
            assert not honest or not _well_formed(data), data[:40]
            continue
        assert honest and hash_object(kind, payload) == oid
        try:
            store.verify(oid)
            view = store.open_blob(oid, verify=True) if kind == "blob" else None
        except (CorruptObject, NotFound):
            continue
        if view is not None:
            assert len(view.buffer) == view.layout.data_length


def _well_formed(data: bytes) -> bool:
    try:
        kind, size, offset = codec.parse_object_header(data)
    except CorruptObject:
        return False
    return len(data) == offset + size


@FUZZ
@given(json_values)
def test_canonical_json_round_trips_exactly(value):
    encoded = canonical.dumps(value)
    assert canonical.loads(encoded) == value
    assert canonical.dumps(canonical.loads(encoded)) == encoded


@FUZZ
@given(st.dictionaries(st.text(max_size=6), json_values, min_size=2, max_size=6), st.randoms())
def test_canonical_json_ignores_key_order(mapping, rnd):
    keys = list(mapping)
    rnd.shuffle(keys)
    shuffled = {k: mapping[k] for k in keys}
    assert canonical.dumps(shuffled) == canonical.dumps(mapping)
    assert hash_object("recipe", canonical.dumps(shuffled)) == hash_object("recipe", canonical.dumps(mapping))


@FUZZ
@given(json_values, st.sampled_from([math.nan, math.inf, -math.inf]))
def test_canonical_json_refuses_non_finite_numbers(value, bad):
    with pytest.raises(ValueError):
        canonical.dumps([value, {"x": bad}])
