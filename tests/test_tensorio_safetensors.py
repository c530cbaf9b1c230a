"""safetensors reader: header validation, bit-exact round trips, zero-copy views."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from persona.errors import InvalidInput, NotFound
from persona.tensorio import dtypes
from persona.tensorio.safetensors_reader import SafetensorsFile, read_header


def raw_file(path: Path, header: object, data: bytes, header_len: int | None = None) -> Path:
    """A safetensors file with an arbitrary (possibly lying) header."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(body) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + body + data)
    return path


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


GOOD = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 8, 16)}


def test_valid_handcrafted_file_reads(tmp_path: Path) -> None:
    data = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    p = raw_file(tmp_path / "ok.safetensors", {**GOOD, "__metadata__": {"x": "y"}}, data)
    with SafetensorsFile(p) as f:
        assert [t.name for t in f.list()] == ["a", "b"]
        assert f.tensor("b").tolist() == [3.0, 4.0]
        assert f.metadata == {"x": "y"}


@pytest.mark.parametrize(
    ("case", "header", "data_len", "needle"),
    [
        ("offsets beyond file", {"a": entry("F32", [4], 0, 16)}, 8, "outside the data section"),
        ("overlap", {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, 16, "overlaps"),
        (
            "overlap hidden behind an empty tensor",
            {"a": entry("F32", [4], 0, 16), "e": entry("F32", [0], 4, 4), "c": entry("F32", [1], 8, 12)},
            16,
            "overlaps",
        ),
        ("contained", {"a": entry("F32", [4], 0, 16), "b": entry("F32", [1], 4, 8)}, 16, "overlaps"),
        ("size mismatch", {"a": entry("F32", [3], 0, 8)}, 8, "needs 12"),
        ("unknown dtype", {"a": entry("F128", [1], 0, 16)}, 16, "unknown dtype"),
        ("negative dim", {"a": entry("F32", [-2], 0, 8)}, 8, "non-negative"),
        ("float dim", {"a": entry("F32", [2.0], 0, 8)}, 8, "non-negative"),
        ("reversed offsets", {"a": entry("F32", [2], 8, 0)}, 8, "outside"),
        ("missing key", {"a": {"dtype": "F32", "shape": [2]}}, 8, "exactly dtype"),
        ("extra key", {"a": {**entry("F32", [2], 0, 8), "x": 1}}, 8, "exactly dtype"),
        ("not an object", [1, 2], 8, "not a JSON object"),
    ],
)
def test_lying_header_is_invalid_input(tmp_path: Path, case: str, header: object, data_len: int, needle: str) -> None:
    p = raw_file(tmp_path / "bad.safetensors", header, b"\0" * data_len)
    with pytest.raises(InvalidInput) as err:
        SafetensorsFile(p)
    assert needle in err.value.message
    assert str(p) in err.value.message
    assert err.value.hint


def test_error_names_the_tensor(tmp_path: Path) -> None:
    p = raw_file(tmp_path / "bad.safetensors", {"model.w": entry("F32", [3], 0, 8)}, b"\0" * 8)
    with pytest.raises(InvalidInput, match="model.w"):
        SafetensorsFile(p)


def test_huge_header_length(tmp_path: Path) -> None:
    p = raw_file(tmp_path / "huge.safetensors", GOOD, b"\0" * 16, header_len=2**62)
    with pytest.raises(InvalidInput, match="implausible"):
        SafetensorsFile(p)


def test_header_length_past_end_of_file(tmp_path: Path) -> None:
    p = raw_file(tmp_path / "short.safetensors", GOOD, b"", header_len=10_000)
    with pytest.raises(InvalidInput, match="past the end"):
        SafetensorsFile(p)


def test_bad_json(tmp_path: Path) -> None:
    p = raw_file(tmp_path / "json.safetensors", b'{"a": {"dtype": ', b"\0" * 8)
    with pytest.raises(InvalidInput, match="not valid JSON"):
        SafetensorsFile(p)


def test_duplicate_tensor_names(tmp_path: Path) -> None:
    body = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    p = raw_file(tmp_path / "dup.safetensors", body, b"\0" * 8)
    with pytest.raises(InvalidInput, match="duplicate"):
        SafetensorsFile(p)


def test_too_short_and_missing(tmp_path: Path) -> None:
    (tmp_path / "tiny.safetensors").write_bytes(b"\1\2")
    with pytest.raises(InvalidInput, match="too short"):
        SafetensorsFile(tmp_path / "tiny.safetensors")
    with pytest.raises(NotFound):
        SafetensorsFile(tmp_path / "absent.safetensors")
    with pytest.raises(InvalidInput, match="directory"):
        SafetensorsFile(tmp_path)


ALL_DTYPES = [
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2,
]


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 3).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(dtype)


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """Raw bytes, so NaN payloads and -0.0 compare exactly."""
    return t.reshape(-1).view(torch.uint8)


def test_round_trip_every_dtype_bit_identical(tmp_path: Path) -> None:
    tensors = {f"t.{i}": sample(d, (3, 5), i) for i, d in enumerate(ALL_DTYPES)}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    p = tmp_path / "all.safetensors"
    save_file(tensors, str(p), metadata={"format": "pt"})
    with SafetensorsFile(p) as f:
        listing = {t.name: t for t in f.list()}
        for name, ref in tensors.items():
            got = f.tensor(name)
            assert got.dtype == ref.dtype and got.shape == ref.shape
            assert torch.equal(as_bytes(got), as_bytes(ref))
            assert listing[name].dtype == dtypes.from_torch(ref.dtype)
            assert listing[name].shape == tuple(ref.shape)


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 7), min_size=0, max_size=3), min_size=1, max_size=5),
    dtype_ix=st.integers(0, len(ALL_DTYPES) - 1),
)
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, shapes: list, dtype_ix: int) -> None:
    dtype = ALL_DTYPES[dtype_ix]
    tensors = {f"w{i}": sample(dtype, tuple(s), i) for i, s in enumerate(shapes)}
    p = tmp_path_factory.mktemp("prop") / "p.safetensors"
    save_file(tensors, str(p))
    with SafetensorsFile(p) as f:
        for name, got in f.iter_tensors():
            ref = tensors[name]
            assert got.shape == ref.shape and got.dtype == ref.dtype
            assert torch.equal(as_bytes(got), as_bytes(ref))


def test_tensors_are_zero_copy_views(tmp_path: Path) -> None:
    p = tmp_path / "z.safetensors"
    save_file({"w": torch.arange(1024, dtype=torch.float32)}, str(p))
    with SafetensorsFile(p) as f:
        a, b = f.tensor("w"), f.tensor("w")
        # two reads of one tensor point at the same mapped bytes: nothing was copied
        assert a.data_ptr() == b.data_ptr()


def test_in_place_writes_never_reach_the_file(tmp_path: Path) -> None:
    p = tmp_path / "cow.safetensors"
    save_file({"w": torch.zeros(16)}, str(p))
    before = p.read_bytes()
    with SafetensorsFile(p) as f:
        f.tensor("w").add_(1.0)
    assert p.read_bytes() == before


def test_tensor_outlives_close(tmp_path: Path) -> None:
    p = tmp_path / "live.safetensors"
    ref = torch.randn(64, 64)
    save_file({"w": ref}, str(p))
    f = SafetensorsFile(p)
    t = f.tensor("w")
    f.close()
    del f
    assert torch.equal(t, ref)  # the mapping stays alive with the view (was a segfault)


def test_misaligned_tensor_is_read_correctly(tmp_path: Path) -> None:
    # a 3-byte int8 tensor first puts the float32 one at data offset 3
    header = {"a": entry("I8", [3], 0, 3), "b": entry("F32", [2], 3, 11)}
    body = json.dumps(header).encode()
    body += b" " * (-(8 + len(body)) % 8)  # data section itself 8-aligned
    data = bytes([1, 2, 3]) + struct.pack("<2f", 1.5, -2.25)
    p = tmp_path / "mis.safetensors"
    p.write_bytes(struct.pack("<Q", len(body)) + body + data)
    with SafetensorsFile(p) as f:
        assert f.tensor("a").tolist() == [1, 2, 3]
        assert f.tensor("b").tolist() == [1.5, -2.25]


def test_read_header_lists_without_data(tmp_path: Path) -> None:
    p = tmp_path / "h.safetensors"
    save_file({"z": torch.zeros(2, 3, dtype=torch.bfloat16), "a": torch.zeros(4)}, str(p))
    infos = read_header(p)
    assert [(i.name, i.dtype, i.shape, i.nbytes) for i in infos] == [
        ("a", "F32", (4,), 16),
        ("z", "BF16", (2, 3), 12),
    ]


def test_dtype_names() -> None:
    for d in ALL_DTYPES:
        assert dtypes.torch_dtype(dtypes.from_torch(d)) == d
    assert dtypes.from_user("bfloat16") == "BF16"
    assert dtypes.from_user("torch.float16") == "F16"
    assert dtypes.from_user("fp32") == "F32"
    with pytest.raises(InvalidInput):
        dtypes.from_user("float7")
    with pytest.raises(InvalidInput):
        dtypes.itemsize("Q4")
    with pytest.raises(InvalidInput):
        dtypes.from_torch(torch.complex64)
