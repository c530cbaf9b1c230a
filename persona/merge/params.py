"""Recipe-level merge parameters, validated once before any tensor is touched.

No torch here: the CLI validates a recipe without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from persona.errors import InvalidInput

METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
ELECT = ("sum", "count")
TRIM = ("tensor", "global")


def check_density(density: float, what: str = "density") -> None:
    """Refuse a density outside (0, 1]: 0 would drop a whole vector silently."""
    if isinstance(density, bool) or not isinstance(density, int | float):
        raise InvalidInput(f"{what} must be a number, got {density!r}", "use a value in (0, 1]")
    if not (math.isfinite(density) and 0.0 < density <= 1.0):
        raise InvalidInput(
            f"{what} must be in (0, 1], got {density!r}",
            "density is the fraction of entries kept: 0.2 keeps the largest 20%",
        )


def check_finite_number(value: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(
            f"{what} must be a finite number, got {value!r}", f"set {what} to e.g. 1.0"
        )


def keep_count(density: float, numel: int) -> int:
    """k = ceil(density * numel), computed exactly on the decimal the user wrote.

    Why not ``math.ceil(density * numel)``: binary floats make 0.7 * 10 come out
    as 7.000000000000001 and so keep 8 of 10. ``Fraction(repr(density))`` is the
    shortest decimal that round-trips (0.7 -> 7/10), so k is what a person
    computing by hand expects. (peft and mergekit use ``int(density * numel)``,
    a floor, and can keep nothing at all of a small tensor.)
    """
    check_density(density)
    if numel <= 0:
        return 0
    return min(numel, math.ceil(Fraction(repr(float(density))) * numel))


@dataclass(frozen=True)
class MergeParams:
    """How to merge: the recipe's method, lambda, default density, seed, election, trim.

    ``density`` is the default per vector; the engine resolves per-vector
    overrides into each term's own ``density``. ``trim='global'`` (one magnitude
    threshold per vector over the whole model, as in the TIES paper) applies to
    ``ties`` only; DARE drops at random and has no threshold to share.
    """

    method: str
    lambda_: float = 1.0
    density: float = 1.0
    seed: int = 0
    elect: str = "sum"
    trim: str = "tensor"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInput(
                f"unknown merge method {self.method!r}", f"use one of: {', '.join(METHODS)}"
            )
        check_finite_number(self.lambda_, "lambda")
        check_density(self.density)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidInput(f"seed must be an integer, got {self.seed!r}", "e.g. seed: 0")
        if self.elect not in ELECT:
            raise InvalidInput(f"unknown elect {self.elect!r}", "use 'sum' (TIES paper) or 'count'")
        if self.trim not in TRIM:
            raise InvalidInput(f"unknown trim {self.trim!r}", "use 'tensor' or 'global'")
        if self.trim == "global" and self.method != "ties":
            raise InvalidInput(
                f"trim: global applies to ties only, not {self.method}",
                "remove 'trim: global' or use method: ties",
            )

    @property
    def uses_sign_election(self) -> bool:
        return self.method in ("ties", "dare_ties")
