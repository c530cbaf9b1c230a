"""Disk full, read-only store, permission denied: a clear error and the store unchanged.

Real faults where the machine allows them (root): a small tmpfs that fills up,
a read-only bind mount, and a process stripped of the capabilities that let
root ignore file permissions. Everywhere: a failing write hook
(``PERSONA_FAULT=<point>:<n>:enospc|eacces|erofs``) makes the n-th write at a
point fail the way the disk would, in a real CLI process.

"Unchanged" means: the same refs, reflog lines and index rows, every object
still there and intact, nothing new reachable, no temp file or lock left; a
write that failed half-way may leave complete but unreferenced objects, which
gc removes. After the fault is gone, the same command succeeds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import faultkit as fk

MESSAGES = {"enospc": "disk full", "eacces": "permission denied", "erofs": "read-only file system"}


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir, tiny_model_dir_b, tiny_lora_adapter, tiny_lora_adapter_rslora,
        tiny_finetuned_dir):
    z = fk.zygote(tmp_path_factory.mktemp("zygote"))
    tpl = fk.template(z, tmp_path_factory.mktemp("template"), {
        "model": tiny_model_dir, "adapter": tiny_lora_adapter[0], "finetuned": tiny_finetuned_dir})
    return z, tpl, {"model_b": tiny_model_dir_b, "adapter_rs": tiny_lora_adapter_rslora[0]}


COMMANDS = {
    "merge": lambda t, i, d: ["merge", "-f", str(t.recipes["dare"]), "-m", "dare"],
    "commit": lambda t, i, d: ["commit", "-f", str(t.recipes["tuned"]), "-m", "more tuned"],
    "rollback": lambda t, i, d: ["rollback", "HEAD~1"],
    "tag": lambda t, i, d: ["tag", "v2"],
    "vector-import": lambda t, i, d: ["vector", "import", "polite", "--adapter", str(i["adapter_rs"])],
    "base-import": lambda t, i, d: ["base", "import", str(i["model_b"]), "--name", "other"],
    "build": lambda t, i, d: ["build", "HEAD~1", "-o", str(d / "out")],
    "gc": lambda t, i, d: ["gc", "--prune-older-than", "1s"],
}


def assert_unchanged(before: fk.Snapshot, store: Path, what: str) -> None:
    after = fk.snapshot(store)
    assert after.refs == before.refs, f"{what}: refs changed"
    assert after.reflogs == before.reflogs, f"{what}: reflogs changed"
    assert before.objects <= after.objects, f"{what}: objects lost"
    assert after.reachable == before.reachable, f"{what}: something new is reachable"
    assert after.rows["commits"] == before.rows["commits"], f"{what}: commit index changed"
    for table, ids in after.rows.items():
        assert ids >= before.rows[table], f"{what}: index rows lost from {table}"
        # only a finished merge result (a build: a cache entry) may have been indexed
        assert all(oid in after.objects and oid not in after.reachable for oid in ids - before.rows[table])
    assert not fk.leftovers(store), f"{what}: left {fk.leftovers(store)}"


def assert_fault_error(result: fk.Result, message: str, what: str) -> None:
    fk.assert_clean_error(result, what)
    assert result.code == 6 and message in result.err.splitlines()[0], f"{what}: {result.err}"


# -- a failing write hook, at every kind of write --------------------------------

# Each kind of write (an object, a ref) in each writing command, each failure mode at least
# three times over the list.
HOOKS = [
    ("merge", "object.write:3", "enospc"), ("merge", "ref.locked:1", "eacces"),
    ("commit", "object.write:1", "erofs"), ("commit", "ref.locked:1", "enospc"),
    ("rollback", "ref.locked:1", "eacces"), ("tag", "ref.locked:1", "erofs"),
    ("vector-import", "object.write:1", "enospc"), ("vector-import", "object.write:5", "eacces"),
    ("vector-import", "ref.locked:1", "erofs"), ("base-import", "object.write:12", "enospc"),
    ("base-import", "ref.locked:1", "eacces"), ("build", "object.write:2", "erofs"),
]


@pytest.mark.parametrize("name, point, action", HOOKS)
def test_failing_write_is_a_clear_error_and_changes_nothing(env, tmp_path, name, point, action):
    z, tpl, inputs = env
    store = fk.copy_store(tpl.store, tmp_path / "store")
    argv = COMMANDS[name](tpl, inputs, tmp_path)
    before = fk.snapshot(store)
    result = z.run(argv, store, env={"PERSONA_FAULT": f"{point}:{action}"})
    assert_fault_error(result, MESSAGES[action], f"{name} with {action} at {point}")
    assert_unchanged(before, store, f"{name} with {action} at {point}")
    assert not (tmp_path / "out").exists()
    fk.fsck_ok(z, store, f"{name} after {action}")
    fk.ok(z.run(argv, store), f"{name} once the disk is back")
    fk.fsck_ok(z, store, f"{name} once the disk is back")


@pytest.mark.parametrize("action", sorted(MESSAGES))
def test_failing_gc_keeps_everything_reachable(env, tmp_path, action):
    """gc cannot be all-or-nothing, but a failure mid-way leaves a consistent store."""
    z, tpl, inputs = env
    store = fk.copy_store(tpl.store, tmp_path / "store")
    before = fk.snapshot(store, reflog_cutoff=time.time() - 1)
    result = z.run(["gc", "--prune-older-than", "1s"], store, env={"PERSONA_FAULT": f"gc.delete:4:{action}"})
    assert_fault_error(result, MESSAGES[action], f"gc with {action}")
    fk.fsck_ok(z, store, f"gc with {action}")
    fk.assert_preserved(before, store, set(), f"gc with {action}", expired_ok=True)
    fk.ok(z.run(["gc", "--prune-older-than", "1s"], store), "gc again")
    fk.fsck_ok(z, store, "gc again")


# -- real faults: tmpfs, read-only mount, no DAC override -----------------------

def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def mounted(*args: str, target: Path):
    """Mount (root only) or skip with the reason; always unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs or a read-only bind needs root (the failing-write hook covers this)")
    try:
        _mount(*args, str(target))
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"mount is not permitted here ({exc.stderr.strip()}); the failing-write hook covers this")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def _used(mnt: Path) -> int:
    stat = os.statvfs(mnt)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def test_disk_full_on_a_real_tmpfs(env, tmp_path):
    z, tpl, inputs = env
    mnt = tmp_path / "small"
    mnt.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=64m", "tmpfs", target=mnt):
        store = fk.copy_store(tpl.store, mnt / "store")
        fk.fsck_ok(z, store, "copy into tmpfs")
        before = fk.snapshot(store)
        # Shrink the disk to what the store uses plus 128 KiB: far less than a second base needs.
        _mount("-o", f"remount,size={_used(mnt) + 128 * 1024}", str(mnt))
        argv = COMMANDS["base-import"](tpl, inputs, tmp_path)
        assert_fault_error(z.run(argv, store), "disk full", "base import on a full disk")

        # Completely full: even a commit's few hundred bytes do not fit, nor the database's
        # shared-memory file (so even reading may be refused, but cleanly).
        filler = mnt / "filler"
        with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)
        for name in ("commit", "merge", "tag", "rollback", "vector-import", "gc"):
            assert_fault_error(z.run(COMMANDS[name](tpl, inputs, tmp_path), store), "disk full",
                               f"{name} on a full disk")
        log = z.run(["log", "--json"], store)
        if log.code != 0:
            assert_fault_error(log, "disk full", "log on a full disk")

        filler.unlink()
        _mount("-o", "remount,size=64m", str(mnt))
        assert_unchanged(before, store, "commands on a full disk")
        fk.fsck_ok(z, store, "after freeing space")
        fk.ok(z.run(argv, store), "base import after freeing space")
        fk.ok(z.run(COMMANDS["commit"](tpl, inputs, tmp_path), store), "commit after freeing space")
        fk.fsck_ok(z, store, "after the re-runs")
        fk.assert_refs_complete(store, "after the re-runs")


def _byte_snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_read_only_store(env, tmp_path):
    z, tpl, inputs = env
    store = fk.copy_store(tpl.store, tmp_path / "store")
    files = _byte_snapshot(store)
    if os.geteuid() == 0:
        context = mounted("--bind", str(store), target=store)
    else:
        context = contextlib.nullcontext(store)
    with context:
        if os.geteuid() == 0:
            _mount("-o", "remount,bind,ro", str(store))
            expected = "read-only file system"
        else:
            for path in [store, *store.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
            expected = "permission denied"
        try:
            for name, command in COMMANDS.items():
                result = z.run(command(tpl, inputs, tmp_path), store)
                assert_fault_error(result, expected, f"{name} on a read-only store")
                assert not (tmp_path / "out").exists()
            if os.geteuid() == 0:  # reading a read-only store still works
                assert fk.ok(z.run(["log", "--json"], store), "log").json()
                fk.fsck_ok(z, store, "read-only store")
        finally:
            if os.geteuid() != 0:
                for path in [store, *store.rglob("*")]:
                    path.chmod(path.stat().st_mode | 0o200)
    assert _byte_snapshot(store) == files


def _drop_dac_capabilities() -> None:  # pragma: no cover - runs in the child before exec
    """Root without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER obeys file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(97)


def test_permission_denied(env, tmp_path):
    z, tpl, inputs = env
    store = fk.copy_store(tpl.store, tmp_path / "store")
    for path in [store, *store.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    files = _byte_snapshot(store)
    try:
        for name in ("commit", "vector-import"):
            argv = COMMANDS[name](tpl, inputs, tmp_path)
            env_ = {**os.environ, "PERSONA_STORE": str(store), "PYTHONPATH": str(fk.REPO_ROOT)}
            proc = subprocess.run([sys.executable, "-m", "persona", *argv], capture_output=True, text=True,
                                  env=env_, preexec_fn=_drop_dac_capabilities if os.geteuid() == 0 else None,
                                  timeout=300)
            if proc.returncode == 97:
                pytest.skip("cannot drop root's file-permission capabilities here (no CAP_SETPCAP)")
            result = fk.Result(proc.returncode, proc.stdout, proc.stderr, 0.0)
            assert_fault_error(result, "permission denied", f"{name} without write permission")
        assert _byte_snapshot(store) == files
    finally:
        for path in [store, *store.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    fk.ok(z.run(COMMANDS["commit"](tpl, inputs, tmp_path), store), "commit once writable")
