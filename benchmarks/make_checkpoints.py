"""Synthetic Llama checkpoints for the merge benchmark (bf16, random, built locally).

For each size: a base model, three fine-tuned variants (base + a small random
perturbation of every tensor, same names, shapes, config and shard layout) and,
for the sizes listed in ``LORA_SIZES``, three PEFT LoRA adapters (rank 16 on
q, k, v, o, gate, up, down). Everything lands under ``$PERSONA_BENCH_DIR``
(default ``/work/bench-data``) in ``checkpoints/<size>/`` and is reused when a
``.complete`` marker with the same spec is there.

    .venv/bin/python benchmarks/make_checkpoints.py [--sizes 0.5b,1.5b] [--force]

Sizes (untied embeddings, full multi-head attention, vocab 32000):

    0.5b: hidden 1024, 24 layers, 16 heads, intermediate 4096  -> 0.47B parameters
    1.5b: hidden 2048, 26 layers, 16 heads, intermediate 5632  -> 1.47B parameters

Values: weights ~ N(0, 0.02) in bf16 (norm weights ~ 1 + N(0, 0.02)); a
variant adds N(0, (0.05 * 0.02)^2) to every entry (a delta of about 5% of a
weight: after bf16 rounding most entries change, by a few ulps). LoRA: A ~ N(0,
1/in), B ~ N(0, 0.002), lora_alpha 32 (scale 2), stored float32 like a PEFT
adapter trained in float32. Generation is seeded, so two machines build the
same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

WEIGHT_STD = 0.02
DELTA_REL = 0.05
LORA_RANK = 16
LORA_ALPHA = 32
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHARD_BYTES = 1 << 30  # 1 GiB shards, so even the 0.5B model has an index
FORMAT = 2  # bump to invalidate caches when the generator changes
LORA_SIZES = ("1.5b", "tiny")


@dataclass(frozen=True)
class Spec:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int = 32000

    def params(self) -> int:
        return sum(_numel(shape) for _, shape in tensor_shapes(self))


SIZES = {
    "0.5b": Spec(hidden=1024, layers=24, heads=16, intermediate=4096),
    "1.5b": Spec(hidden=2048, layers=26, heads=16, intermediate=5632),
    "tiny": Spec(hidden=256, layers=2, heads=4, intermediate=512, vocab=1000),  # smoke tests only
}
VARIANTS = ("ft1", "ft2", "ft3")


def bench_dir() -> Path:
    return Path(os.environ.get("PERSONA_BENCH_DIR", "/work/bench-data"))


def size_dir(size: str) -> Path:
    return bench_dir() / "checkpoints" / size


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def tensor_shapes(spec: Spec) -> list[tuple[str, tuple[int, ...]]]:
    h, i = spec.hidden, spec.intermediate
    out = [("model.embed_tokens.weight", (spec.vocab, h))]
    for layer in range(spec.layers):
        p = f"model.layers.{layer}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (h, h)),
            (p + "self_attn.v_proj.weight", (h, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (spec.vocab, h))]
    return out


def _config(spec: Spec) -> dict:
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    data = config.to_dict()
    data["architectures"] = ["LlamaForCausalLM"]
    data["torch_dtype"] = "bfloat16"
    data["dtype"] = "bfloat16"
    return data


def _randn(shape: tuple[int, ...], gen: torch.Generator, std: float, mean: float = 0.0) -> torch.Tensor:
    """N(mean, std^2) in bf16, made in float32 chunks of rows (bounded temporary memory)."""
    out = torch.empty(shape, dtype=torch.bfloat16)
    flat = out.view(-1)
    step = 16 << 20
    tmp = torch.empty(min(step, flat.numel()), dtype=torch.float32)
    for start in range(0, flat.numel(), step):
        n = min(step, flat.numel() - start)
        chunk = tmp[:n]
        chunk.normal_(mean, std, generator=gen)
        flat[start : start + n].copy_(chunk)
    return out


def _perturb(base: torch.Tensor, gen: torch.Generator, std: float) -> torch.Tensor:
    out = torch.empty_like(base)
    src, dst = base.view(-1), out.view(-1)
    step = 16 << 20
    tmp = torch.empty(min(step, src.numel()), dtype=torch.float32)
    for start in range(0, src.numel(), step):
        n = min(step, src.numel() - start)
        chunk = tmp[:n]
        chunk.normal_(0.0, std, generator=gen)
        chunk.add_(src[start : start + n])
        dst[start : start + n].copy_(chunk)
    return out


class ShardWriter:
    """Collects tensors and saves a safetensors shard whenever SHARD_BYTES fill."""

    def __init__(self, out: Path, total_bytes: int) -> None:
        self.out = out
        self.count = max(1, -(-total_bytes // SHARD_BYTES))
        self.index = 0
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.weight_map: dict[str, str] = {}
        self.total = total_bytes

    def name(self, index: int) -> str:
        return f"model-{index + 1:05d}-of-{self.count:05d}.safetensors"

    def add(self, key: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > SHARD_BYTES and self.index < self.count - 1:
            self.flush()
        self.pending[key] = tensor
        self.pending_bytes += nbytes
        self.weight_map[key] = self.name(self.index)

    def flush(self) -> None:
        if self.pending:
            save_file(self.pending, str(self.out / self.name(self.index)), metadata={"format": "pt"})
            self.index += 1
            self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        self.flush()
        # the shard count was estimated up front; rename if fewer were used
        if self.index != self.count:
            real = self.index
            for k in range(real):
                old = self.out / self.name(k)
                new = self.out / f"model-{k + 1:05d}-of-{real:05d}.safetensors"
                old.rename(new)
            self.weight_map = {
                key: value.replace(f"-of-{self.count:05d}", f"-of-{real:05d}") for key, value in self.weight_map.items()
            }
            self.count = real
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_models(size: str, spec: Spec, root: Path, seed: int) -> None:
    """Base and variants in one pass: each base tensor is made once and perturbed three times.

    At most one pending shard per model is held in memory (4 x 1 GiB).
    """
    shapes = tensor_shapes(spec)
    total = sum(_numel(s) for _, s in shapes) * 2
    config = _config(spec)
    names = ("base", *VARIANTS)
    writers = {}
    for name in names:
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        gen_cfg = {"bos_token_id": 1, "eos_token_id": 2, "_from_model_config": True}
        (d / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
        writers[name] = ShardWriter(d, total)
    gens = {name: torch.Generator().manual_seed(seed * 1000 + k) for k, name in enumerate(names)}
    for key, shape in shapes:
        is_norm = len(shape) == 1
        base = _randn(shape, gens["base"], WEIGHT_STD, 1.0 if is_norm else 0.0)
        writers["base"].add(key, base)
        for variant in VARIANTS:
            writers[variant].add(key, _perturb(base, gens[variant], DELTA_REL * WEIGHT_STD))
    for w in writers.values():
        w.close()


def _write_loras(spec: Spec, root: Path, base_dir: Path, seed: int) -> None:
    from peft import LoraConfig

    h, i = spec.hidden, spec.intermediate
    dims = {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h),
            "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}  # (out, in)
    for k in range(3):
        out = root / f"lora{k + 1}"
        out.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(seed * 1000 + 100 + k)
        tensors = {}
        for layer in range(spec.layers):
            for target in LORA_TARGETS:
                group = "self_attn" if target in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                prefix = f"base_model.model.model.layers.{layer}.{group}.{target}"
                d_out, d_in = dims[target]
                a = torch.empty(LORA_RANK, d_in).normal_(0.0, d_in ** -0.5, generator=gen)
                b = torch.empty(d_out, LORA_RANK).normal_(0.0, 0.002, generator=gen)
                tensors[prefix + ".lora_A.weight"] = a
                tensors[prefix + ".lora_B.weight"] = b
        save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=list(LORA_TARGETS),
                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
        data = config.to_dict()
        data["base_model_name_or_path"] = str(base_dir)
        for key, value in list(data.items()):
            if isinstance(value, set):
                data[key] = sorted(value)
        (out / "adapter_config.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _marker(size: str, spec: Spec, seed: int) -> dict:
    return {"format": FORMAT, "size": size, "spec": asdict(spec), "seed": seed, "weight_std": WEIGHT_STD,
            "delta_rel": DELTA_REL, "lora": size in LORA_SIZES, "lora_rank": LORA_RANK}


def ensure(size: str, seed: int = 0, force: bool = False, log=print) -> Path:
    """Build the checkpoints of ``size`` unless an identical build is cached; returns its folder."""
    spec = SIZES[size]
    root = size_dir(size)
    marker = root / ".complete"
    want = _marker(size, spec, seed)
    if not force and marker.is_file() and json.loads(marker.read_text()) == want:
        return root
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    started = time.perf_counter()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    log(f"building {size} checkpoints ({spec.params() / 1e9:.2f}B parameters) in {root} ...")
    _write_models(size, spec, root, seed)
    if size in LORA_SIZES:
        _write_loras(spec, root, root / "base", seed)
    marker.write_text(json.dumps(want, indent=2) + "\n")
    log(f"built {size} in {time.perf_counter() - started:.1f}s")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0.5b,1.5b", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    for size in args.sizes.split(","):
        if size not in SIZES:
            print(f"error: unknown size {size!r} (choose from {', '.join(SIZES)})", file=sys.stderr)
            return 2
        print(ensure(size, args.seed, args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
