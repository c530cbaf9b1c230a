"""Canonical JSON: the one byte form of every structured object.

Hashing structured objects only works if the same value always serialises to the
same bytes, in any process: sorted keys, no whitespace, UTF-8, and floats written
by ``repr`` (shortest round-trip form). NaN and infinities are refused because
they have no JSON form and would make ids depend on the encoder.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _check_finite(value: Any, path: str = "$") -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite number at {path}")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"non-string key at {path}")
            _check_finite(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_finite(item, f"{path}[{index}]")


def dumps(value: Any) -> bytes:
    """Serialise ``value`` to canonical JSON bytes."""
    _check_finite(value)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def loads(data: bytes) -> Any:
    """Parse canonical (or any) JSON bytes."""
    return json.loads(data.decode("utf-8"))
