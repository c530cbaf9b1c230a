"""Object ids: sha256 over ``<kind> <size>\\0`` + payload, as lowercase hex.

The header binds the kind into the id (a recipe and a file with the same bytes
get different ids) and matches how the object is laid out on disk, so ``fsck``
re-hashes a file exactly as it lies.
"""

from __future__ import annotations

import hashlib
import re

ID_HEX_LENGTH = 64
_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_PREFIX_RE = re.compile(r"^[0-9a-f]{4,64}$")


def object_header(kind: str, size: int) -> bytes:
    return f"{kind} {size}\0".encode("ascii")


def hash_object(kind: str, payload: bytes | memoryview) -> str:
    digest = hashlib.sha256(object_header(kind, len(payload)))
    digest.update(payload)
    return digest.hexdigest()


def is_object_id(text: str) -> bool:
    return bool(_ID_RE.match(text))


def is_id_prefix(text: str) -> bool:
    """At least 4 hex digits: short enough to type, long enough to be useful."""
    return bool(_PREFIX_RE.match(text))


def short(oid: str, length: int = 12) -> str:
    return oid[:length]
