"""One vector's contribution to one tensor: a dense delta, a fine-tuned tensor, or LoRA factors.

A term knows how to write ``factor * delta`` for a range of rows into a float32
buffer, so the kernels never need the whole delta materialised: a LoRA delta
``scale * B @ A`` is formed one chunk of rows at a time, always as the product of
*this* vector's own factors (never ``sum(B_i) @ sum(A_i)``, which adds the
cross-terms of peft issue #3004).

Rows: a tensor is seen as a 2-D matrix ``(numel // row_len, row_len)`` with
``row_len = shape[-1]`` (1 for a scalar). Chunks are whole rows, so a low-rank
chunk is one matrix product ``B[r0:r1] @ A``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from persona.errors import Incompatible, InvalidInput
from persona.merge.params import check_density, check_finite_number


def row_len(shape: torch.Size | tuple[int, ...]) -> int:
    """Length of one row in the 2-D view the kernels chunk by."""
    return int(shape[-1]) if len(shape) >= 1 and int(shape[-1]) > 0 else 1


def _check_common(alpha: float, density: float, vector_id: str) -> None:
    check_finite_number(alpha, f"alpha of vector {vector_id!r}")
    check_density(density, f"density of vector {vector_id!r}")
    if not isinstance(vector_id, str) or not vector_id:
        raise InvalidInput("a merge term needs a non-empty vector id", "pass the vector's id")


@dataclass
class DenseTerm:
    """A full delta tensor (any float dtype; read chunk by chunk, never copied whole)."""

    delta: torch.Tensor
    alpha: float
    density: float
    vector_id: str
    _flat_cache: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def shape(self) -> torch.Size:
        return self.delta.shape

    def validate(self, name: str, shape: torch.Size) -> None:
        """Refuse a bad alpha/density or a delta whose shape is not the base's."""
        _check_common(self.alpha, self.density, self.vector_id)
        if not self.delta.is_floating_point():
            raise Incompatible(
                f"vector {self.vector_id!r}: tensor {name!r} has dtype {self.delta.dtype}, not a float",
                "re-import the vector; deltas are float tensors",
            )
        if self.delta.shape != shape:
            raise Incompatible(
                f"vector {self.vector_id!r}: tensor {name!r} has shape {tuple(self.delta.shape)}, "
                f"the base has {tuple(shape)}",
                "the vector was made from another base or architecture",
            )

    def _flat(self) -> torch.Tensor:
        """The delta as a flat view (a non-contiguous delta is copied once, then cached)."""
        if self._flat_cache is None:
            d = self.delta.detach()
            self._flat_cache = (d if d.is_contiguous() else d.contiguous()).reshape(-1)
        return self._flat_cache

    def write_rows(self, out: torch.Tensor, r0: int, r1: int, factor: float) -> None:
        """``out[:] = factor * delta[rows r0:r1]`` in float32 (``out`` 1-D, contiguous)."""
        n = row_len(self.delta.shape)
        src = self._flat()[r0 * n : r1 * n]
        # copy_ then mul_ is ~3x faster than one mixed-dtype mul(out=) on CPU.
        out.copy_(src)
        if factor != 1.0:
            out.mul_(factor)

    def add_rows(
        self, acc: torch.Tensor, r0: int, r1: int, factor: float, scratch: torch.Tensor
    ) -> None:
        """``acc += factor * delta[rows r0:r1]``; ``scratch`` is a float32 buffer like ``acc``."""
        n = row_len(self.delta.shape)
        src = self._flat()[r0 * n : r1 * n]
        if src.dtype == torch.float32:
            acc.add_(src, alpha=factor)
        else:
            scratch.copy_(src)
            acc.add_(scratch, alpha=factor)

    def materialise(self, out: torch.Tensor) -> torch.Tensor:
        """The delta in float32, written into ``out`` (numel of the delta); returns it shaped."""
        flat = out.reshape(-1)[: self.delta.numel()]
        flat.copy_(self._flat())
        return flat.view(self.delta.shape)


# Tensors up to this many entries have their W_ft - W_base formed once in float32
# (64 MB); larger ones (embeddings, LM heads) are formed chunk by chunk on each pass.
MATERIALISE_MAX_ELEMS = 16 * 1024 * 1024


@dataclass
class DiffTerm:
    """A fine-tuned tensor whose delta is ``finetuned - base``, formed chunk by chunk in float32.

    Why: a dense vector imported from a bf16 checkpoint is stored as the
    fine-tuned tensor itself (2 bytes per entry) rather than as a float32 delta
    (4 bytes); the difference of two bf16 (or fp16) numbers is exact in float32,
    so the merge sees the same delta while reading half the bytes.
    """

    finetuned: torch.Tensor
    base: torch.Tensor
    alpha: float
    density: float
    vector_id: str
    # Optional float32 storage for the formed delta, reused across tensors by the caller:
    # a fresh 16 MB allocation per tensor and vector costs more in page faults than it saves.
    buffer: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _scratch: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _delta: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def shape(self) -> torch.Size:
        return self.finetuned.shape

    def validate(self, name: str, shape: torch.Size) -> None:
        """Refuse a bad alpha/density, a non-float tensor, or shapes that are not the base's."""
        _check_common(self.alpha, self.density, self.vector_id)
        for which, tensor in (("fine-tuned tensor", self.finetuned), ("base tensor", self.base)):
            if not tensor.is_floating_point():
                raise Incompatible(
                    f"vector {self.vector_id!r}: the {which} {name!r} has dtype {tensor.dtype}, not a float",
                    "re-import the vector from its checkpoint",
                )
            if tensor.shape != shape:
                raise Incompatible(
                    f"vector {self.vector_id!r}: the {which} {name!r} has shape {tuple(tensor.shape)}, "
                    f"the base has {tuple(shape)}",
                    "the vector was made from another base or architecture",
                )

    def _materialised(self) -> torch.Tensor | None:
        """The whole delta in float32, formed once, for a tensor of at most MATERIALISE_MAX_ELEMS.

        TIES reads each vector's delta three or four times (the selection
        passes, then the accumulation); forming W_ft - W_base once per tensor
        instead of per pass saves ~3/4 of that work. Larger tensors (embeddings)
        stream chunk by chunk, so peak memory stays a few chunks above the
        matrices' size whatever the vocabulary.
        """
        numel = self.finetuned.numel()
        if self._delta is None and numel <= MATERIALISE_MAX_ELEMS:
            buf = self.buffer
            usable = (buf is not None and buf.dtype == torch.float32 and buf.is_contiguous()
                      and buf.numel() >= numel)
            delta = buf.reshape(-1)[:numel] if usable else torch.empty(numel, dtype=torch.float32)
            delta.copy_(self.finetuned.detach().reshape(-1))
            delta.sub_(self._base_f32(self.base.detach().reshape(-1)))
            self._scratch = None  # only needed to form it
            self._delta = delta
        return self._delta

    def _rows(self, r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = row_len(self.finetuned.shape)
        ft = self.finetuned.detach().reshape(-1)[r0 * n : r1 * n]
        base = self.base.detach().reshape(-1)[r0 * n : r1 * n]
        return ft, base

    def _base_f32(self, base: torch.Tensor) -> torch.Tensor:
        """The base rows in float32 (a reused scratch buffer: a mixed-dtype ``sub_`` is ~3x slower)."""
        if base.dtype == torch.float32:
            return base
        if self._scratch is None or self._scratch.numel() < base.numel():
            self._scratch = torch.empty(base.numel(), dtype=torch.float32)
        buf = self._scratch[: base.numel()]
        buf.copy_(base)
        return buf

    def write_rows(self, out: torch.Tensor, r0: int, r1: int, factor: float) -> None:
        """``out[:] = factor * (finetuned - base)[rows r0:r1]`` in float32."""
        delta = self._materialised()
        if delta is not None:
            n = row_len(self.finetuned.shape)
            out.copy_(delta[r0 * n : r1 * n])
        else:
            ft, base = self._rows(r0, r1)
            out.copy_(ft)
            out.sub_(self._base_f32(base))
        if factor != 1.0:
            out.mul_(factor)

    def add_rows(
        self, acc: torch.Tensor, r0: int, r1: int, factor: float, scratch: torch.Tensor
    ) -> None:
        """``acc += factor * (finetuned - base)[rows r0:r1]``."""
        delta = self._materialised()
        if delta is not None:
            n = row_len(self.finetuned.shape)
            acc.add_(delta[r0 * n : r1 * n], alpha=factor)
            return
        ft, base = self._rows(r0, r1)
        scratch.copy_(ft)
        scratch.sub_(self._base_f32(base))
        acc.add_(scratch, alpha=factor)

    def materialise(self, out: torch.Tensor) -> torch.Tensor:
        """The delta in float32, written into ``out``; returns it shaped."""
        flat = out.reshape(-1)[: self.finetuned.numel()]
        self.write_rows(flat, 0, int(self.finetuned.numel() // row_len(self.finetuned.shape)), 1.0)
        return flat.view(self.finetuned.shape)


@dataclass
class LowRankTerm:
    """LoRA factors: delta = scale * B @ A, with A (r x in) and B (out x r).

    ``transpose=True`` is for layers that store the weight as (in, out) (GPT-2's
    Conv1D, peft's ``fan_in_fan_out``): the delta is then ``(scale * B @ A).T``.
    """

    A: torch.Tensor
    B: torch.Tensor
    scale: float
    alpha: float
    density: float
    vector_id: str
    transpose: bool = False
    _f32: tuple[torch.Tensor, torch.Tensor] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def shape(self) -> torch.Size:
        out_f, in_f = int(self.B.shape[0]), int(self.A.shape[1])
        return torch.Size((in_f, out_f) if self.transpose else (out_f, in_f))

    def validate(self, name: str, shape: torch.Size) -> None:
        """Refuse malformed factors or a product whose shape is not the base's."""
        _check_common(self.alpha, self.density, self.vector_id)
        check_finite_number(self.scale, f"LoRA scale of vector {self.vector_id!r}")
        if self.A.dim() != 2 or self.B.dim() != 2 or self.A.shape[0] != self.B.shape[1]:
            raise Incompatible(
                f"vector {self.vector_id!r}: tensor {name!r} has LoRA factors "
                f"A{tuple(self.A.shape)} and B{tuple(self.B.shape)} that do not multiply",
                "A must be (r, in) and B (out, r)",
            )
        if not (self.A.is_floating_point() and self.B.is_floating_point()):
            raise Incompatible(
                f"vector {self.vector_id!r}: LoRA factors of {name!r} are not float tensors",
                "re-import the adapter",
            )
        if self.shape != shape:
            raise Incompatible(
                f"vector {self.vector_id!r}: LoRA delta for {name!r} has shape {tuple(self.shape)}, "
                f"the base has {tuple(shape)}",
                "the adapter was made for another base or architecture",
            )

    def factors_f32(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A and B in float32, converted once (they are small: r x in, out x r)."""
        if self._f32 is None:
            self._f32 = (
                self.A.detach().to(torch.float32).contiguous(),
                self.B.detach().to(torch.float32).contiguous(),
            )
        return self._f32

    def _rows_product(self, r0: int, r1: int, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Left and right operands whose product is ``factor * scale * delta[r0:r1]``.

        The factor scales the small operand (rows x r), so the big product needs no
        extra pass.
        """
        a, b = self.factors_f32()
        f = factor * self.scale
        if self.transpose:
            return a[:, r0:r1].t() * f, b.t()
        return b[r0:r1] * f, a

    def write_rows(self, out: torch.Tensor, r0: int, r1: int, factor: float) -> None:
        left, right = self._rows_product(r0, r1, factor)
        torch.mm(left, right, out=out.view(r1 - r0, right.shape[1]))

    def add_rows(
        self, acc: torch.Tensor, r0: int, r1: int, factor: float, scratch: torch.Tensor
    ) -> None:
        del scratch  # addmm_ accumulates in place
        left, right = self._rows_product(r0, r1, 1.0)
        acc.view(r1 - r0, right.shape[1]).addmm_(left, right, alpha=factor)

    def materialise(self, out: torch.Tensor) -> torch.Tensor:
        """``scale * B @ A`` (transposed if asked) in float32, written into ``out``."""
        rows = int(self.shape[0])
        flat = out.reshape(-1)[: rows * int(self.shape[1])]
        self.write_rows(flat, 0, rows, 1.0)
        return flat.view(self.shape)


Term = DenseTerm | DiffTerm | LowRankTerm
