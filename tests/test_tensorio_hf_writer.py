"""Streaming sharded writer and atomic model directories."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from persona.errors import Conflict, InvalidInput
from persona.tensorio.hf_dir import open_model_dir
from persona.tensorio.hf_writer import ShardedSafetensorsWriter, write_model_dir
from persona.tensorio.safetensors_reader import SafetensorsFile


def load_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)


def test_written_dir_loads_with_identical_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    out = write_model_dir(tmp_path / "out", src.files, src.iter_tensors(), max_shard_bytes=120_000)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) >= 3
    assert all(s.name.endswith(f"-of-{len(shards):05d}.safetensors") for s in shards)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == src.total_bytes
    assert set(index["weight_map"]) == {t.name for t in src.tensors}
    a, b = load_model(tiny_model_dir), load_model(out)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_shards_respect_max_size(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    limit = 120_000
    out = write_model_dir(tmp_path / "out", src.files, src.iter_tensors(), max_shard_bytes=limit)
    biggest = max(t.nbytes for t in src.tensors)
    for shard in out.glob("model-*.safetensors"):
        with SafetensorsFile(shard) as f:
            data = sum(t.nbytes for t in f.list())
            # a shard exceeds the limit only when a single tensor does
            assert data <= max(limit, biggest)


def test_single_shard_is_still_indexed(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    out = write_model_dir(tmp_path / "out", src.files, src.iter_tensors())
    assert sorted(p.name for p in out.glob("model*")) == [
        "model-00001-of-00001.safetensors",
        "model.safetensors.index.json",
    ]


def test_deterministic_bytes(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    a = write_model_dir(tmp_path / "a", src.files, src.iter_tensors(), max_shard_bytes=150_000)
    b = write_model_dir(tmp_path / "b", src.files, src.iter_tensors(), max_shard_bytes=150_000)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    with SafetensorsFile(next(a.glob("model-*.safetensors"))) as f:
        assert f.metadata == {"format": "pt"}


def test_tied_config_drops_lm_head(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    cfg = dict(src.config, tie_word_embeddings=True)
    files = dict(src.files, **{"config.json": json.dumps(cfg).encode()})
    out = write_model_dir(tmp_path / "tied", files, src.iter_tensors())
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"]
    model = load_model(out)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def failing_stream(src, after: int) -> Iterator[tuple[str, torch.Tensor]]:
    for i, item in enumerate(src.iter_tensors()):
        if i == after:
            raise RuntimeError("simulated crash mid-write")
        yield item


def test_crash_leaves_no_target_and_no_temp(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    parent = tmp_path / "builds"
    parent.mkdir()
    with pytest.raises(RuntimeError, match="simulated"):
        write_model_dir(parent / "out", src.files, failing_stream(src, 7), max_shard_bytes=60_000)
    assert list(parent.iterdir()) == []


def test_crash_keeps_previous_build_when_forced(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    out = write_model_dir(tmp_path / "out", src.files, src.iter_tensors())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError):
        write_model_dir(out, src.files, failing_stream(src, 3), force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_non_empty_target_unless_forced(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Conflict, match="not empty"):
        write_model_dir(out, src.files, src.iter_tensors())
    assert (out / "notes.txt").read_text() == "mine"
    write_model_dir(out, src.files, src.iter_tensors(), force=True)
    assert not (out / "notes.txt").exists()
    assert (out / "model.safetensors.index.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_model_dir(empty, src.files, src.iter_tensors())  # an empty dir is fine
    assert (empty / "config.json").exists()


def test_files_must_stay_inside(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    with pytest.raises(InvalidInput, match="outside"):
        write_model_dir(tmp_path / "o", dict(src.files, **{"../escape.txt": b"x"}), iter(()))
    with pytest.raises(InvalidInput, match="config.json"):
        write_model_dir(tmp_path / "o", {"README.md": b"x"}, iter(()))


def test_writer_streams_and_progress(tmp_path: Path) -> None:
    seen: list[int] = []
    w = ShardedSafetensorsWriter(tmp_path, max_shard_bytes=64, progress=seen.append)
    tensors = {
        "a": torch.arange(10, dtype=torch.float32),
        "b": torch.ones(3, 3, dtype=torch.bfloat16),
        "c": torch.tensor(True),
        "d": torch.arange(6, dtype=torch.int64).reshape(2, 3).T,  # non-contiguous
    }
    for name, t in tensors.items():
        w.add(name, t)
    with pytest.raises(InvalidInput, match="twice"):
        w.add("a", torch.zeros(1))
    weight_map = w.finish()
    assert seen == [40, 18, 1, 48]
    # 40 + 18 + 1 = 59 bytes fit under 64; "d" (48 bytes) opens a second shard
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    assert weight_map == {"a": first, "b": first, "c": first, "d": second}
    assert not list(tmp_path.glob(".*"))  # no temp files left
    for name, ref in tensors.items():
        got = load_file(str(tmp_path / weight_map[name]))[name]
        assert got.dtype == ref.dtype and torch.equal(got, ref)


def test_writer_context_manager_aborts(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardedSafetensorsWriter(tmp_path, max_shard_bytes=16) as w:
        w.add("a", torch.zeros(8))
        w.add("b", torch.zeros(8))  # seals the first shard under a temp name
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidInput, match="no tensors"), ShardedSafetensorsWriter(tmp_path) as w:
        w.finish()
