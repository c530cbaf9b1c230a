"""Which blob files already hashed to their id, so a merge does not re-hash gigabytes it checked before.

Why: a merge reads every input blob; re-computing each one's sha256 on every
merge cost a third of a TIES merge's CPU time (benchmarks/README.md). Like git's
index, persona remembers a file's identity when it last proved good (inode,
size, mtime and ctime, in nanoseconds) and re-hashes a blob only when that
identity has changed. Any write to an object file, a chmod, a copy, a restore
from a backup or a re-link changes it, so an edited or replaced object is always
re-hashed (and refused if it no longer matches). What this cannot see is damage
that leaves the file's metadata alone (bit rot under the filesystem): that is
`persona fsck`'s job, which always hashes every object. ``PERSONA_VERIFY=always``
turns the cache off for a command.

The records live in the store's database (table ``verified_blobs``) and are
written in one transaction by :meth:`VerifyCache.flush`; a record only ever
says "this exact file was good", so losing unflushed ones costs a re-hash, never
correctness.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

Identity = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def identity(st: os.stat_result) -> Identity:
    return (int(st.st_ino), int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns))


def cache_disabled() -> bool:
    return os.environ.get("PERSONA_VERIFY", "").strip().lower() == "always"


class VerifyCache:
    """Known-good blob files; loaded on first use, flushed explicitly."""

    def __init__(self, load: Callable[[], dict[str, Identity]],
                 save: Callable[[dict[str, Identity], float], None]) -> None:
        self._load = load
        self._save = save
        self._known: dict[str, Identity] | None = None
        self._new: dict[str, Identity] = {}

    def known(self, oid: str, st: os.stat_result) -> bool:
        """Whether this file, exactly as it is now, hashed to ``oid`` before."""
        if cache_disabled():
            return False
        ident = identity(st)
        if self._new.get(oid) == ident:
            return True
        if self._known is None:
            self._known = self._load()
        return self._known.get(oid) == ident

    def remember(self, oid: str, st: os.stat_result) -> None:
        """Record a file that was just hashed (or written) and matched ``oid``."""
        self._new[oid] = identity(st)

    def flush(self) -> int:
        """Persist what was learnt since the last flush; returns how many records."""
        if not self._new:
            return 0
        pending, self._new = self._new, {}
        self._save(pending, time.time())
        if self._known is not None:
            self._known.update(pending)
        return len(pending)
