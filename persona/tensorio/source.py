"""``ModelSource``: what every reader returns and every writer accepts.

A model is config + small files (tokenizer, generation config) + a stream of
named tensors. Keeping the tensors behind an iterator factory, with a cheap
listing beside it, lets an import or a merge walk a model larger than RAM one
tensor at a time, and lets a build hand the writers a store-backed source that
never existed as a directory. This module does not import torch: the listing
and the metadata are plain data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from persona.errors import InvalidInput, NotFound
from persona.tensorio import dtypes

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's name, safetensors dtype ("F32", "BF16", ...) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.itemsize(self.dtype)


TensorStream = Iterator[tuple[str, "torch.Tensor"]]


@dataclass
class ModelSource:
    """A model to import or to write, streamed tensor by tensor.

    ``files`` holds every small file a loader needs besides the weights, by
    relative name (``config.json``, ``generation_config.json``, tokenizer
    files); ``config`` is ``config.json`` parsed. ``tensors`` lists the
    weights sorted by name, and ``open_tensors()`` yields ``(name, tensor)``
    in that same order. When ``tie_word_embeddings`` is true the listing has
    no ``lm_head.weight``: transformers ties it to the embedding on load, so
    the model owns one matrix, not two.
    """

    path: Path | None
    config: dict
    files: dict[str, bytes]
    architecture: str
    tie_word_embeddings: bool
    tensors: list[TensorInfo]
    open_tensors: Callable[[], TensorStream]
    warnings: list[str] = field(default_factory=list)
    fetch_tensor: Callable[[str], torch.Tensor] | None = None

    @property
    def total_bytes(self) -> int:
        """Bytes of tensor data, for progress bars."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel for t in self.tensors)

    def iter_tensors(self, check_finite: bool = True) -> TensorStream:
        """Yield ``(name, tensor)`` sorted by name, refusing NaN/Inf as they stream by."""
        expected = {t.name: t for t in self.tensors}
        seen = 0
        for name, tensor in self.open_tensors():
            info = expected.get(name)
            if info is None:
                raise InvalidInput(
                    f"{self._where()}: tensor {name} is not in the model's listing",
                    "the weight files changed while they were being read; try again",
                )
            if check_finite:
                assert_finite(name, tensor, self._where())
            seen += 1
            yield name, tensor
        if seen != len(expected):
            raise InvalidInput(
                f"{self._where()}: expected {len(expected)} tensors, read {seen}",
                "the weight files changed while they were being read; try again",
            )

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor by name (random access; streaming is cheaper for whole models)."""
        if name not in {t.name for t in self.tensors}:
            raise NotFound(f"{self._where()}: no tensor named {name}", "see `persona base show` for names")
        if self.fetch_tensor is not None:
            return self.fetch_tensor(name)
        for n, t in self.open_tensors():
            if n == name:
                return t
        raise NotFound(f"{self._where()}: no tensor named {name}", "the weight files changed while reading")

    def config_bytes(self) -> bytes:
        return self.files.get("config.json") or (json.dumps(self.config, indent=2, sort_keys=True) + "\n").encode()

    def _where(self) -> str:
        return str(self.path) if self.path is not None else "model"


def assert_finite(name: str, tensor: torch.Tensor, where: str = "model") -> None:
    """Raise InvalidInput if a floating tensor holds NaN or Inf.

    A single NaN in a base poisons every merge built on it, silently; better
    to refuse the import. ``aminmax`` propagates NaN (documented) and shows
    +-Inf at the extremes, so one reduction pass answers the question with no
    full-size temporary; it is ~50x faster than ``isfinite(t).all()`` here.
    """
    import torch

    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    flat = tensor.reshape(-1)
    if flat.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        flat = flat.float()  # no reductions on float8
    lo, hi = torch.aminmax(flat)
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        raise InvalidInput(
            f"{where}: tensor {name} contains NaN or Inf values",
            "the checkpoint is corrupt or was saved after a diverged training run",
        )
