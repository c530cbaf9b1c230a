"""Measuring helpers for the benchmarks: a subprocess sampler, cache eviction, bandwidth.

``run_measured`` starts a command and, every 20 ms until it exits, reads
``/proc/PID/status`` of the process and all its descendants:

- peak RSS: the largest sampled sum of ``VmRSS`` over the tree, or the largest
  ``VmHWM`` (the kernel's own high-water mark) of any one process in it,
  whichever is larger. It counts the mmap'd input pages a process touched
  (file-backed, clean: the kernel can drop them at any time).
- peak anonymous memory: the largest sampled sum of ``RssAnon`` over the tree:
  heap, tensors, private dirty pages. This is the memory the merge really holds.

A 20 ms poll can miss a spike shorter than that; ``VmHWM`` cannot, which is why
peak RSS takes both. Nothing here needs psutil.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

POLL_S = 0.02
IDLE_WAIT = 180.0  # seconds wait_idle waits at most (bench_merge --idle-wait sets it)


@dataclass
class Measured:
    argv: list[str]
    wall_s: float
    peak_rss: int  # bytes
    peak_anon: int  # bytes
    returncode: int
    samples: int
    cpu_s: float = 0.0  # user + system CPU seconds of the command's process tree
    foreign_cpu_s: float = 0.0  # CPU seconds the rest of the machine used meanwhile
    stdout: str = ""
    stderr: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"argv": self.argv, "wall_s": self.wall_s, "peak_rss_bytes": self.peak_rss,
                "peak_anon_bytes": self.peak_anon, "returncode": self.returncode, "samples": self.samples,
                "cpu_s": self.cpu_s, "foreign_cpu_s": self.foreign_cpu_s, **self.extra}


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    kids += [int(x) for x in handle.read().split()]
            except FileNotFoundError:
                pass
    except FileNotFoundError:
        pass
    return kids


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def run_measured(argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 timeout: float | None = None) -> Measured:
    """Run ``argv`` to completion, sampling its process tree's memory every 20 ms."""
    out_path = Path(f"/tmp/_bench_{os.getpid()}_{time.monotonic_ns()}")
    busy0, kids0, self0 = _busy_seconds(), _children_cpu(), _self_cpu()
    with open(str(out_path) + ".out", "w+") as fout, open(str(out_path) + ".err", "w+") as ferr:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=fout, stderr=ferr)
        peak_rss = peak_anon = samples = 0
        while True:
            rc = proc.poll()
            total_rss = total_anon = 0
            for pid in _tree(proc.pid):
                st = _status(pid)
                total_rss += st.get("VmRSS", 0)
                total_anon += st.get("RssAnon", 0)
                peak_rss = max(peak_rss, st.get("VmHWM", 0))
            peak_rss = max(peak_rss, total_rss)
            peak_anon = max(peak_anon, total_anon)
            samples += 1
            if rc is not None:
                break
            if timeout is not None and time.perf_counter() - started > timeout:
                proc.kill()
                proc.wait()
                break
            time.sleep(POLL_S)
        wall = time.perf_counter() - started
        cpu = _children_cpu() - kids0
        foreign = max(0.0, _busy_seconds() - busy0 - cpu - (_self_cpu() - self0))
        fout.seek(0)
        ferr.seek(0)
        stdout, stderr = fout.read(), ferr.read()
    for suffix in (".out", ".err"):
        Path(str(out_path) + suffix).unlink(missing_ok=True)
    rc = proc.returncode if proc.returncode is not None else -9
    return Measured(list(map(str, argv)), wall, peak_rss, peak_anon, rc, samples, cpu, foreign, stdout, stderr)


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores), from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = handle.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# -- page cache and bandwidth ---------------------------------------------------

def files_under(paths: Iterable[Path]) -> list[Path]:
    out = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not f.is_symlink())
    return out


def evict(paths: Iterable[Path]) -> int:
    """Drop the files' pages from the page cache (posix_fadvise DONTNEED); returns bytes covered."""
    total = 0
    for f in files_under(paths):
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            with contextlib.suppress(OSError):
                os.fdatasync(fd)  # dirty pages would survive DONTNEED
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


def read_files(paths: Iterable[Path], block: int = 16 << 20) -> tuple[int, float]:
    """Read every byte of the files sequentially; returns (bytes, seconds)."""
    buf = bytearray(block)
    view = memoryview(buf)
    total = 0
    started = time.perf_counter()
    for f in files_under(paths):
        with open(f, "rb", buffering=0) as handle:
            while n := handle.readinto(view):
                total += n
    return total, time.perf_counter() - started


def write_bandwidth(directory: Path, nbytes: int, block: int = 16 << 20) -> tuple[int, float]:
    """Write ``nbytes`` to a new file in ``directory`` and fsync it; returns (bytes, seconds)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".bw_probe_{os.getpid()}"
    data = os.urandom(block)
    written = 0
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as handle:
        while written < nbytes:
            n = min(block, nbytes - written)
            handle.write(data[:n] if n < block else data)
            written += n
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - started
    evict([path])
    path.unlink()
    return written, seconds


def memory_bandwidth(nbytes: int = 1 << 30) -> dict[str, float]:
    """Copy and read bandwidth of RAM (GB/s), with torch, 2 threads: context for the floor."""
    import torch

    a = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    b = torch.empty_like(a)
    b.copy_(a)
    best_copy = best_read = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        b.copy_(a)
        best_copy = min(best_copy, time.perf_counter() - t0)
        t0 = time.perf_counter()
        a.sum()
        best_read = min(best_read, time.perf_counter() - t0)
    return {"copy_gbps": 2 * nbytes / best_copy / 1e9, "read_gbps": nbytes / best_read / 1e9}


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def wait_quiet(threshold: float = 1.5, max_wait: float = 600.0, log=print) -> float:
    """Wait until the 1-minute load average is below ``threshold`` (at most ``max_wait`` s)."""
    started = time.perf_counter()
    warned = False
    while os.getloadavg()[0] >= threshold and time.perf_counter() - started < max_wait:
        if not warned:
            log(f"  waiting for a quiet machine (load {os.getloadavg()[0]:.2f} >= {threshold}) ...")
            warned = True
        time.sleep(5)
    return os.getloadavg()[0]


def dump_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def busy_cores(window: float = 1.0) -> float:
    """Cores busy on the whole machine over ``window`` seconds (call it while nothing of ours runs)."""
    b0, s0, t0 = _busy_seconds(), _self_cpu(), time.perf_counter()
    time.sleep(window)
    return max(0.0, (_busy_seconds() - b0 - (_self_cpu() - s0)) / (time.perf_counter() - t0))


def wait_idle(max_busy: float = 0.3, max_wait: float | None = None, log=print) -> float:
    """Before a timed run: wait until other processes use under ``max_busy`` cores (at most ``max_wait`` s).

    The load average is useless between our own runs (it remembers them for a
    minute); sampling /proc/stat over a second sees only what runs now.
    """
    max_wait = IDLE_WAIT if max_wait is None else max_wait
    started = time.perf_counter()
    busy = busy_cores()
    warned = False
    while busy >= max_busy and time.perf_counter() - started < max_wait:
        if not warned:
            log(f"  other processes busy ({busy:.2f} cores); waiting up to {max_wait:.0f}s ...")
            warned = True
        time.sleep(4)
        busy = busy_cores()
    return busy
