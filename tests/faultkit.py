"""Harness for the fault tests: run the real CLI in subprocesses, kill them, check the store.

Starting ``python -m persona`` costs a couple of seconds of imports (torch) before
a single byte is written, which would make a crash suite with dozens of kill
points take many minutes. So most runs go through a *zygote*: one interpreter
that imports persona, torch and the readers once, then forks a fresh child per
command; the child runs ``persona.cli.app.main(argv)`` exactly as the console
script does, with its own environment, working directory and output files, and
is a real process that the test kills with SIGKILL. A few runs per suite use
the plain ``[sys.executable, "-m", "persona", ...]`` entry point as a control.

The checks after a crash live here too: a snapshot of what the store holds
(refs, reflogs, index rows, the objects every ref and reflog entry reaches) and
the invariants the fault tests assert.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
INDEXED = {"commit": "commits", "vector": "vectors", "base": "bases", "build": "builds"}

_ZYGOTE_SOURCE = r"""
import importlib, io, json, os, sys, traceback
for name in ("torch", "safetensors", "sqlalchemy", "persona.cli.app", "persona.db.migrate",
             "persona.db.models", "persona.porcelain.models", "persona.porcelain.build",
             "persona.porcelain.engine", "persona.porcelain.index", "persona.store.fsck",
             "persona.store.gc", "persona.tensorio.hf_dir", "persona.tensorio.peft_reader",
             "persona.tensorio.hf_writer", "persona.merge.kernel", "persona.store.tensors",
             "sqlite3", "sqlalchemy.dialects.sqlite", "rich.progress", "rich.console", "pydantic",
             "typer._adapters", "zoneinfo", "secrets", "hmac", "transformers", "peft",
             "persona.cli.train_cmds", "persona.train.porcelain", "persona.porcelain.materialise"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
channel_in, channel_out = sys.stdin, sys.stdout
done = {}

def reply(data):
    channel_out.write(json.dumps(data) + "\n")
    channel_out.flush()

def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        done[pid] = os.waitstatus_to_exitcode(status)

def child(req):
    code = 70
    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        sys.stdin = open(os.devnull)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8")
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        from persona.cli.app import main
        try:
            main(req["argv"])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)

reply({"ready": os.getpid()})
while True:
    line = channel_in.readline()
    if not line:
        break
    req = json.loads(line)
    if req["op"] == "run":
        pid = os.fork()
        if pid == 0:
            child(req)
        reply({"pid": pid})
    elif req["op"] == "poll":
        reap()
        pid = req["pid"]
        reply({"code": done.pop(pid, None)})
"""


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Child:
    pid: int
    out: Path
    err: Path
    started: float
    real: subprocess.Popen | None = None


class Zygote:
    """One preloaded interpreter; each command is a forked child of it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE_SOURCE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
        self._lock = threading.Lock()
        self._counter = 0
        ready = self._recv(timeout=180)
        assert "ready" in ready, ready

    def _recv(self, timeout: float = 60) -> dict[str, Any]:
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not readable:
            raise TimeoutError("the zygote did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote exited with {self.proc.wait()}")
        return json.loads(line)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            return self._recv()

    def _paths(self) -> tuple[Path, Path]:
        with self._lock:
            self._counter += 1
            n = self._counter
        out, err = self.workdir / f"run{n}.out", self.workdir / f"run{n}.err"
        out.write_bytes(b"")  # there even if the child is killed before it opens them
        err.write_bytes(b"")
        return out, err

    def spawn(self, argv: list[str], store: Path, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> Child:
        out, err = self._paths()
        full_env = {**os.environ, "PERSONA_STORE": str(store), "OMP_NUM_THREADS": "1", **(env or {})}
        full_env.pop("PERSONA_DEBUG", None)
        request = {"op": "run", "argv": list(argv), "env": full_env, "cwd": str(cwd or store.parent),
                   "out": str(out), "err": str(err)}
        started = time.monotonic()
        pid = self._ask(request)["pid"]
        return Child(pid, out, err, started)

    def spawn_real(self, argv: list[str], store: Path, cwd: Path | None = None,
                   env: dict[str, str] | None = None) -> Child:
        """The console entry point itself, ``python -m persona``, as a control."""
        out, err = self._paths()
        full_env = {**os.environ, "PERSONA_STORE": str(store), "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        full_env.pop("PERSONA_DEBUG", None)
        started = time.monotonic()
        with open(out, "wb") as out_handle, open(err, "wb") as err_handle:
            proc = subprocess.Popen([sys.executable, "-m", "persona", *argv], stdout=out_handle,
                                    stderr=err_handle, stdin=subprocess.DEVNULL, env=full_env,
                                    cwd=cwd or store.parent)
        return Child(proc.pid, out, err, started, proc)

    def wait(self, child: Child, timeout: float = 120) -> Result:
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            if child.real is not None:
                code = child.real.poll()
            else:
                code = self._ask({"op": "poll", "pid": child.pid})["code"]
            if code is not None:
                break
            if time.monotonic() > deadline:
                kill(child)
                raise TimeoutError(f"command still running after {timeout}s: pid {child.pid}")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        seconds = time.monotonic() - child.started
        return Result(code, child.out.read_text(errors="replace"), child.err.read_text(errors="replace"),
                      seconds)

    def run(self, argv: list[str], store: Path, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> Result:
        return self.wait(self.spawn(argv, store, cwd, env), timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def kill(child: Child) -> None:
    """SIGKILL, as `kill -9` would (a child that already exited is a zombie until reaped: harmless)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signal.SIGKILL)


_ZYGOTE: Zygote | None = None


def zygote(workdir: Path) -> Zygote:
    """The session's zygote (started on first use, shared by every fault test module)."""
    global _ZYGOTE
    if _ZYGOTE is None or _ZYGOTE.proc.poll() is not None:
        _ZYGOTE = Zygote(workdir)
        atexit.register(_ZYGOTE.close)
    return _ZYGOTE


def ok(result: Result, what: str = "") -> Result:
    assert result.code == 0, f"{what} exited {result.code}\nstdout: {result.out}\nstderr: {result.err}"
    return result


def leftovers(store: Path) -> list[Path]:
    """Temp files and ref locks under objects/, refs/ and logs/ (a failed write must leave none)."""
    found = list(store.glob(".HEAD.*"))
    for folder in ("objects", "refs", "logs"):
        found += [p for p in (store / folder).rglob("*") if p.name.endswith((".tmp", ".lock"))]
    return found


def assert_clean_error(result: Result, what: str = "") -> None:
    """A failure the user can act on: one `error:` line (+ a hint), no traceback, a typed exit code."""
    assert result.code not in (0, 70, -9), f"{what}: exit {result.code}\n{result.err}"
    lines = result.err.strip().splitlines()
    assert lines and lines[0].startswith("error: "), f"{what}: {result.err!r}"
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), f"{what}: {result.err!r}"
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err


# -- the template store ---------------------------------------------------------

RECIPES = {
    "listen": {"base": "tiny", "method": "task_arithmetic",
               "vectors": [{"name": "listening", "alpha": 1.0}]},
    "ties": {"base": "tiny", "method": "ties", "density": 0.5,
             "vectors": [{"name": "listening", "alpha": 1.0}, {"name": "tuned", "alpha": -0.5}]},
    "dare": {"base": "tiny", "method": "dare_ties", "density": 0.6, "seed": 3,
             "vectors": [{"name": "listening", "alpha": 0.7}, {"name": "tuned", "alpha": 0.4}]},
    "tuned": {"base": "tiny", "method": "task_arithmetic", "lambda": 0.5,
              "vectors": [{"name": "tuned", "alpha": 1.0}]},
    "both": {"base": "tiny", "method": "dare_linear", "density": 0.8, "seed": 11,
             "vectors": [{"name": "listening", "alpha": 0.3}, {"name": "tuned", "alpha": 0.3}]},
}


def write_recipes(folder: Path) -> dict[str, Path]:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, body in RECIPES.items():
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(body, sort_keys=False))
    return paths


@dataclass
class Template:
    store: Path
    recipes: dict[str, Path]
    inputs: dict[str, Path]
    notes: dict[str, Any] = field(default_factory=dict)


_TEMPLATE: list[Template] = []


def template(z: Zygote, folder: Path, inputs: dict[str, Path]) -> Template:
    """A store with history to protect, built once per session through the CLI.

    tiny base; vectors `listening` (LoRA adapter) and `tuned` (full checkpoint);
    main: commit(listen) -> merge(ties) [tag v1]; then two more commits, one
    merged, rolled back so they live only in the reflog. Every object and
    reflog line is then aged by a day, so `gc --prune-older-than 1s` has
    reflog entries to expire and a chain of commits, recipes, builds, trees and
    blobs to delete, while everything on main must survive.
    """
    if _TEMPLATE:
        return _TEMPLATE[0]
    store = folder / "store"
    recipes = write_recipes(folder / "recipes")
    steps = [
        ["init", str(store)],
        ["base", "import", str(inputs["model"]), "--name", "tiny"],
        ["vector", "import", "listening", "--adapter", str(inputs["adapter"])],
        ["vector", "import", "tuned", "--checkpoint", str(inputs["finetuned"])],
        ["commit", "-f", str(recipes["listen"]), "-m", "listening only"],
        ["merge", "-f", str(recipes["ties"]), "-m", "ties with less tuned"],
        ["tag", "v1"],
        ["commit", "-f", str(recipes["tuned"]), "-m", "abandoned 1"],
        ["merge", "-f", str(recipes["both"]), "-m", "abandoned 2"],
        ["rollback", "HEAD~2", "-m", "back to v1"],
    ]
    for argv in steps:
        ok(z.run(argv, store), " ".join(argv))
    age_store(store, 86400)
    log = ok(z.run(["log", "--json"], store), "log").json()
    result = Template(store, recipes, inputs, {"first": log[-1]["id"], "head": log[0]["id"]})
    _TEMPLATE.append(result)
    return result


def age_store(store: Path, seconds: float) -> None:
    """Make every object and reflog line ``seconds`` older (as if written long ago)."""
    then = time.time() - seconds
    for path in (store / "objects").rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))
    for log in (store / "logs").rglob("*"):
        if not log.is_file():
            continue
        lines = []
        for line in log.read_text().splitlines():
            data = json.loads(line)
            data["time"] = float(data["time"]) - seconds
            lines.append(json.dumps(data, sort_keys=True))
        log.write_text("".join(line + "\n" for line in lines))


def copy_store(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


# -- snapshots and invariants ---------------------------------------------------

@dataclass
class Snapshot:
    refs: dict[str, str]
    reflogs: dict[str, list[tuple]]
    objects: set[str]
    reachable: set[str]  # from refs and every reflog entry
    rows: dict[str, set[str]]


def _open(store: Path):
    from persona.repo import Repository

    return Repository.open(store)


def index_rows(repo) -> dict[str, set[str]]:
    from sqlalchemy import select

    from persona.db.models import BaseRow, BuildRow, CommitRow, VectorRow

    def work(session) -> dict[str, set[str]]:
        return {model.__tablename__: set(session.execute(select(model.id)).scalars())
                for model in (CommitRow, VectorRow, BaseRow, BuildRow)}

    return repo.db.read(work)


def snapshot(store: Path, reflog_cutoff: float = 0.0) -> Snapshot:
    """What the store holds; ``reachable`` counts reflog entries at or after ``reflog_cutoff``."""
    from persona.store.gc import reachable

    repo = _open(store)
    try:
        refs = dict(repo.refs.all_refs())
        reflogs = {ref: [(e.old, e.new, e.time, e.message) for e in repo.refs.reflog(ref)]
                   for ref in repo.refs.reflog_refs()}
        return Snapshot(refs, reflogs, set(repo.objects.iter_ids()), reachable(repo, reflog_cutoff),
                        index_rows(repo))
    finally:
        repo.close()


def fsck_ok(z: Zygote, store: Path, what: str = "") -> dict[str, Any]:
    """`persona fsck --json` through the CLI: exit 0 and no problem."""
    result = z.run(["fsck", "--json"], store)
    assert result.code == 0, f"fsck after {what}: exit {result.code}\n{result.out}\n{result.err}"
    report = result.json()
    assert report["ok"] and not report["problems"], f"fsck after {what}: {report['problems']}"
    return report


def assert_refs_complete(store: Path, what: str = "", require_index: bool = True) -> None:
    """Every ref reaches a complete graph of intact objects (and, with ``require_index``, an indexed one).

    A crash between a ref update and its index row leaves the row missing (fsck
    accepts that: the index is rebuilt from the objects); re-running the
    command writes it, so after the re-run the index must be complete.
    """
    from persona.store.fsck import REF_KINDS

    repo = _open(store)
    try:
        rows = index_rows(repo)
        for ref, value in repo.refs.all_refs():
            if value.startswith("ref: "):
                continue
            kind = next(k for prefix, k in REF_KINDS.items() if ref.startswith(prefix))
            assert repo.objects.kind_of(value) == kind, f"{what}: {ref} -> a {repo.objects.kind_of(value)}"
            stack, seen = [value], set()
            while stack:
                oid = stack.pop()
                if oid in seen:
                    continue
                seen.add(oid)
                repo.objects.verify(oid)  # present and intact, or this raises
                oid_kind = repo.objects.kind_of(oid)
                if require_index and oid_kind in ("commit", "vector", "base"):
                    assert oid in rows[INDEXED[oid_kind]], f"{what}: {oid_kind} {oid[:12]} ({ref}) not indexed"
                if oid_kind not in ("blob", "file"):
                    from persona.store import objects as obj

                    stack.extend(obj.referenced_ids(oid_kind, repo.objects.get(oid)[1]))
    finally:
        repo.close()


def assert_preserved(before: Snapshot, store: Path, moved: set[str], what: str = "",
                     expired_ok: bool = False) -> Snapshot:
    """Nothing that existed is lost or changed.

    Every object ``before`` reached is still there (fsck re-hashed it: same id,
    same bytes), every ref not in ``moved`` has its old value, every index row is
    still there, and every reflog keeps its old lines in order (gc may expire
    lines older than its grace period: ``expired_ok``).
    """
    after = snapshot(store)
    lost = before.reachable - after.objects
    assert not lost, f"{what}: {len(lost)} reachable object(s) lost, e.g. {sorted(lost)[0][:12]}"
    for ref, value in before.refs.items():
        if ref not in moved:
            assert after.refs.get(ref) == value, f"{what}: {ref} changed {value[:12]} -> {after.refs.get(ref)}"
    for table, ids in before.rows.items():
        gone = {oid for oid in ids - after.rows[table] if oid in before.reachable}
        assert not gone, f"{what}: index rows lost from {table}: {sorted(gone)[:3]}"
    for ref, lines in before.reflogs.items():
        now = after.reflogs.get(ref, [])
        if expired_ok:
            kept = [line for line in lines if line in now]
            assert now[: len(kept)] == kept, f"{what}: reflog of {ref} reordered"
        else:
            assert now[: len(lines)] == lines, f"{what}: reflog of {ref} lost or changed lines"
    return after
