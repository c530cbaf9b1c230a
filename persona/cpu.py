"""How many CPUs this process may really use, and torch's thread count from that.

``os.cpu_count()`` reports the machine's cores, not the process's share: a
container limited by a cgroup quota (``cpu.max``: 200000 100000 = 2 CPUs) or a
process pinned by ``taskset`` sees every core of the host. torch sizes its
intra-op pool from the host count, and OpenMP threads that outnumber the CPUs
actually available spin against each other at every barrier: on a 2-core
machine shared with other jobs, distillation with torch's default threads made
about one teacher answer per 100 s until it was limited to one thread.

So the budget is the smallest of: the affinity mask (``os.sched_getaffinity``),
the cgroup v2 quota (``cpu.max``, rounded up), the cgroup v1 quota
(``cpu.cfs_quota_us / cpu.cfs_period_us``), and ``os.cpu_count()``.
``PERSONA_THREADS`` (or a command's ``--threads``) overrides it.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_v2_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup v2 ``cpu.max`` of this process's cgroup, if any."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    candidates = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0":
            candidates.append(root / parts[2].lstrip("/") / "cpu.max")
    candidates.append(root / "cpu.max")
    for path in candidates:
        try:
            quota, period = path.read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota == "max":
            return None
        try:
            q, p = float(quota), float(period)
        except ValueError:
            return None
        return q / p if q > 0 and p > 0 else None
    return None


def _cgroup_v1_quota(root: Path) -> float | None:
    try:
        quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on at once (at least 1)."""
    counts = [os.cpu_count() or 1]
    with contextlib.suppress(AttributeError, OSError):
        counts.append(len(os.sched_getaffinity(0)))
    for quota in (_cgroup_v2_quota(cgroup_root), _cgroup_v1_quota(cgroup_root)):
        if quota is not None:
            counts.append(max(1, math.ceil(quota)))
    return max(1, min(counts))


def thread_budget(explicit: int | None = None) -> int:
    """Threads to use: ``explicit``, else ``PERSONA_THREADS``, else :func:`available_cpus`."""
    if explicit is not None:
        if explicit < 1:
            from persona.errors import InvalidInput

            raise InvalidInput(f"--threads must be at least 1, got {explicit}", "e.g. --threads 2")
        return explicit
    env = os.environ.get("PERSONA_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value < 1:
            from persona.errors import InvalidInput

            raise InvalidInput(f"PERSONA_THREADS must be a positive integer, got {env!r}",
                               "e.g. PERSONA_THREADS=2, or unset it")
        return value
    return available_cpus()


def configure_torch(explicit: int | None = None) -> int:
    """Set torch's intra-op threads from :func:`thread_budget`; returns the count."""
    import torch

    threads = thread_budget(explicit)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
