"""Inspect a Hugging Face model directory without executing anything in it.

What we read: ``config.json`` (required), ``generation_config.json`` and the
tokenizer files (copied as bytes so a build can reproduce them exactly), and
the weights from ``model.safetensors`` or the shards listed by
``model.safetensors.index.json``. Nothing here imports code from the
directory: a config with ``auto_map`` (remote code) only earns a warning, and
``trust_remote_code`` is never set. Pickle checkpoints (``*.bin``, ``*.pt``,
...) can run arbitrary code when unpickled, so they are refused unless the
caller opts in, and even then are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from persona.errors import InvalidInput, NotFound, UnsafeInput
from persona.tensorio import dtypes
from persona.tensorio.safetensors_reader import SafetensorsFile
from persona.tensorio.source import ModelSource, TensorInfo, TensorStream

if TYPE_CHECKING:
    import torch

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

#: files AutoTokenizer may need, whichever tokenizer class the model uses
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "source.spm",
    "target.spm",
)
#: transformers 5 keeps named alternative chat templates in this folder
CHAT_TEMPLATE_DIR = "additional_chat_templates"

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
PICKLE_HINT = "convert the checkpoint to safetensors, or pass --allow-pickle if you trust its source"

#: tensors a tied model does not own: transformers re-creates them from the embedding
TIED_NAMES = ("lm_head.weight",)


def read_json(path: Path, what: str) -> dict:
    """A JSON object from a file, or one clear InvalidInput."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(f"{path} not found", f"is {path.parent} a model directory?") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{path}: {what} is not valid JSON ({exc})", "fix or re-download the file") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: {what} must be a JSON object", "fix or re-download the file")
    return data


def collect_small_files(model_dir: Path) -> dict[str, bytes]:
    """config, generation config and tokenizer files, by relative POSIX name."""
    files: dict[str, bytes] = {}
    for name in ("config.json", "generation_config.json", *TOKENIZER_FILES):
        p = model_dir / name
        if p.is_file():
            files[name] = p.read_bytes()
    extra = model_dir / CHAT_TEMPLATE_DIR
    if extra.is_dir():
        for p in sorted(extra.iterdir()):
            if p.is_file() and p.suffix == ".jinja":
                files[f"{CHAT_TEMPLATE_DIR}/{p.name}"] = p.read_bytes()
    return files


def config_warnings(config: dict, config_path: Path) -> list[str]:
    """Refuse what we cannot represent; warn about what we deliberately ignore."""
    if "quantization_config" in config:
        method = config["quantization_config"].get("quant_method", "?") if isinstance(
            config["quantization_config"], dict
        ) else "?"
        raise InvalidInput(
            f"{config_path}: the checkpoint is quantized ({method}); its weights are packed integers",
            "import the unquantized (float) version of the model",
        )
    warnings: list[str] = []
    if config.get("auto_map"):
        warnings.append(
            f"{config_path} asks for remote code (auto_map: {sorted(config['auto_map'])}); "
            "it was not executed, and the model is handled by transformers' built-in classes only"
        )
    return warnings


def _shard_files(model_dir: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors weight files, and the index's weight_map if sharded."""
    index_path = model_dir / SAFETENSORS_INDEX
    if index_path.is_file():
        index = read_json(index_path, "the shard index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidInput(f"{index_path}: missing or empty weight_map", "fix or re-download the index")
        shards: list[Path] = []
        for shard in sorted(set(weight_map.values())):
            if not isinstance(shard, str) or PurePosixPath(shard).name != shard or shard in (".", ".."):
                raise InvalidInput(
                    f"{index_path}: shard name {shard!r} is not a plain file name",
                    "an index may only name files next to it",
                )
            p = model_dir / shard
            if not p.is_file():
                raise NotFound(f"{index_path} lists shard {shard}, which is missing", "re-download the model")
            shards.append(p)
        return shards, {str(k): v for k, v in weight_map.items()}
    single = model_dir / SAFETENSORS_SINGLE
    if single.is_file():
        return [single], None
    others = sorted(p for p in model_dir.glob("*.safetensors") if p.is_file())
    if len(others) == 1:
        return others, None
    if len(others) > 1:
        raise InvalidInput(
            f"{model_dir}: several .safetensors files but no {SAFETENSORS_INDEX}",
            "add the index file, or keep only the model's weight file in the directory",
        )
    return [], None


#: pickles a training run leaves next to the weights; never weights themselves
NON_WEIGHT_PICKLES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")


def _pickle_files(model_dir: Path) -> list[Path]:
    """The pickle weight files, by HF's conventions: an index's shards, or one file."""
    index = model_dir / "pytorch_model.bin.index.json"
    if index.is_file():
        weight_map = read_json(index, "the shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidInput(f"{index}: missing or empty weight_map", "fix or re-download the index")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not isinstance(shard, str) or PurePosixPath(shard).name != shard or not (model_dir / shard).is_file():
                raise NotFound(f"{index} lists shard {shard!r}, which is missing", "re-download the model")
        return [model_dir / shard for shard in shards]
    single = model_dir / "pytorch_model.bin"
    if single.is_file():
        return [single]
    candidates = sorted(
        p
        for p in model_dir.iterdir()
        if p.is_file()
        and p.suffix in PICKLE_SUFFIXES
        and p.name not in NON_WEIGHT_PICKLES
        and not p.name.startswith("rng_state")
    )
    if len(candidates) > 1:
        raise InvalidInput(
            f"{model_dir}: several pickle files ({', '.join(p.name for p in candidates[:4])}) and no index",
            "keep only the weights file, or convert the checkpoint to safetensors",
        )
    return candidates


def load_pickle_weights(path: Path) -> dict[str, torch.Tensor]:
    """A pickle checkpoint with ``weights_only=True``: tensors and containers only."""
    import pickle

    import torch

    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # legacy (pre-zip) serialization cannot be mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeInput(
            f"{path}: refusing to unpickle non-tensor objects ({str(exc).splitlines()[0]})",
            "convert the checkpoint to safetensors with a trusted tool",
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise InvalidInput(f"{path}: cannot read checkpoint ({exc})", "re-download or re-export it") from None
    if isinstance(data, dict) and len(data) == 1:
        (only,) = data.values()
        if isinstance(only, dict) and next(iter(data)) in ("state_dict", "model", "module"):
            data = only
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise InvalidInput(f"{path}: not a flat state dict of named tensors", "export the model's state_dict")
    return data


def _resolve_tie(config: dict, names: set[str]) -> bool:
    """Tied when the config says so; when it is silent, when the file has no lm_head."""
    value = config.get("tie_word_embeddings")
    if isinstance(value, bool):
        return value
    return "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def open_model_dir(path: str | Path, allow_pickle: bool = False) -> ModelSource:
    """Inspect an HF model directory; tensors stream lazily from mmap'd files."""
    model_dir = Path(path)
    if not model_dir.exists():
        raise NotFound(f"no such directory: {model_dir}", "check the path")
    if not model_dir.is_dir():
        raise InvalidInput(f"{model_dir} is not a directory", "pass a Hugging Face model directory or a .gguf file")
    config_path = model_dir / "config.json"
    if not config_path.is_file() and (model_dir / "adapter_config.json").is_file():
        raise InvalidInput(
            f"{model_dir} is a PEFT adapter, not a full model",
            "import it as a vector: persona vector import NAME --adapter DIR",
        )
    if not config_path.is_file():
        raise InvalidInput(
            f"{model_dir} has no config.json: not a Hugging Face model directory",
            "pass the directory that save_pretrained wrote",
        )
    config = read_json(config_path, "config.json")
    warnings = config_warnings(config, config_path)
    if (model_dir / "generation_config.json").is_file():
        read_json(model_dir / "generation_config.json", "generation_config.json")
    files = collect_small_files(model_dir)

    shards, weight_map = _shard_files(model_dir)
    if shards:
        by_name, fetch = _open_safetensors(model_dir, shards, weight_map)
    else:
        pickles = _pickle_files(model_dir)
        if not pickles:
            raise NotFound(
                f"{model_dir} has no weights (no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX})",
                "save the model with save_pretrained(safe_serialization=True)",
            )
        if not allow_pickle:
            raise UnsafeInput(
                f"{pickles[0]}: pickle checkpoints can execute code when loaded", PICKLE_HINT
            )
        by_name, fetch = _open_pickles(pickles)

    tie = _resolve_tie(config, set(by_name))
    listing = [by_name[n] for n in sorted(by_name) if not (tie and n in TIED_NAMES)]
    if not listing:
        raise InvalidInput(f"{model_dir}: the weight files hold no tensors", "re-export the model")
    architectures = config.get("architectures")
    architecture = (
        architectures[0]
        if isinstance(architectures, list) and architectures
        else str(config.get("model_type", "unknown"))
    )

    names = [t.name for t in listing]

    def open_tensors() -> TensorStream:
        for name in names:
            yield name, fetch(name)

    return ModelSource(
        path=model_dir,
        config=config,
        files=files,
        architecture=architecture,
        tie_word_embeddings=tie,
        tensors=listing,
        open_tensors=open_tensors,
        warnings=warnings,
        fetch_tensor=fetch,
    )


def _open_safetensors(
    model_dir: Path, shards: list[Path], weight_map: dict[str, str] | None
) -> tuple[dict[str, TensorInfo], Callable[[str], torch.Tensor]]:
    files = [SafetensorsFile(p) for p in shards]
    owner: dict[str, SafetensorsFile] = {}
    infos: dict[str, TensorInfo] = {}
    for f in files:
        for info in f.list():
            if info.name in owner:
                raise InvalidInput(
                    f"{model_dir}: tensor {info.name} appears in both {owner[info.name].path.name} "
                    f"and {f.path.name}",
                    "the shards are inconsistent; re-download the model",
                )
            owner[info.name] = f
            infos[info.name] = info
    if weight_map is not None:
        for name, shard in weight_map.items():
            f = owner.get(name)
            if f is None or f.path.name != shard:
                raise InvalidInput(
                    f"{model_dir / SAFETENSORS_INDEX}: lists {name} in {shard}, but it is not there",
                    "the index and the shards disagree; re-download the model",
                )

    def fetch(name: str) -> torch.Tensor:
        return owner[name].tensor(name)

    return infos, fetch


def _open_pickles(pickles: list[Path]) -> tuple[dict[str, TensorInfo], Callable[[str], torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    for p in pickles:
        for name, t in load_pickle_weights(p).items():
            if name in tensors:
                raise InvalidInput(f"{p}: tensor {name} appears in two checkpoint files", "keep one copy")
            tensors[name] = t
    infos = {
        n: TensorInfo(n, dtypes.from_torch(t.dtype), tuple(t.shape)) for n, t in tensors.items()
    }
    return infos, tensors.__getitem__
