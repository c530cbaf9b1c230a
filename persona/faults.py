"""Fault injection for the crash and disk-failure tests: a no-op unless asked for.

The store layer calls ``checkpoint(name)`` at the moments a crash matters most
(an object's temp file written but not linked, a ref locked but not replaced,
objects written but no ref yet, a database transaction about to commit, gc
between deletions). Normally that is one dictionary lookup in ``os.environ``.

``PERSONA_FAULT=<point>[:<n>[:<action>]]`` makes the n-th call (default the
first) of ``checkpoint(<point>)`` in this process act: ``kill`` (the default)
sends itself SIGKILL, exactly like ``kill -9`` from outside; ``enospc``,
``eacces`` and ``erofs`` raise the matching OSError, as a full disk, a
permission change or a read-only remount would at that point.

``PERSONA_FAULT_TRACE=<file>`` appends the name of every checkpoint passed,
one per line, so a test harness can count the points a command goes through.
"""

from __future__ import annotations

import errno
import os
import signal

_ERRORS = {"enospc": errno.ENOSPC, "eacces": errno.EACCES, "erofs": errno.EROFS}
_hits: dict[str, int] = {}


def checkpoint(name: str) -> None:
    """Mark a crash-relevant point; act only when PERSONA_FAULT names it."""
    environ = os.environ
    if "PERSONA_FAULT" not in environ and "PERSONA_FAULT_TRACE" not in environ:
        return
    trace = environ.get("PERSONA_FAULT_TRACE")
    if trace:
        with open(trace, "a", encoding="utf-8") as handle:
            handle.write(name + "\n")
    spec = environ.get("PERSONA_FAULT", "")
    point, _, rest = spec.partition(":")
    if point != name:
        return
    count_text, _, action = rest.partition(":")
    count = int(count_text) if count_text else 1
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != count:
        return
    action = action or "kill"
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = _ERRORS[action]
    raise OSError(code, os.strerror(code), f"<fault injected at {name}>")
