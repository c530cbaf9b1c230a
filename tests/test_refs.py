"""Refs: compare-and-swap, reflogs, name validation, crash-left locks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from persona.errors import Conflict, InvalidInput
from persona.store.refs import RefStore, validate_name

A, B, C = "a" * 64, "b" * 64, "c" * 64


def test_cas_update_and_conflict(tmp_path):
    refs = RefStore(tmp_path)
    refs.update("refs/heads/main", A, expected=None, message="first")
    refs.update("refs/heads/main", B, expected=A, message="second")
    with pytest.raises(Conflict):
        refs.update("refs/heads/main", C, expected=A, message="stale writer")
    assert refs.resolve("refs/heads/main") == B
    log = refs.reflog("refs/heads/main")
    assert [(e.old, e.new, e.message) for e in log] == [(None, A, "first"), (A, B, "second")]


def test_expected_none_means_must_not_exist(tmp_path):
    refs = RefStore(tmp_path)
    refs.update("refs/tags/v1", A, expected=None)
    with pytest.raises(Conflict):
        refs.update("refs/tags/v1", B, expected=None)


def test_head_follows_branch_and_logs_both(tmp_path):
    refs = RefStore(tmp_path)
    refs.update("HEAD", "refs/heads/main", symbolic=True)
    refs.update("refs/heads/main", A, expected=None, message="c1")
    assert refs.resolve("HEAD") == A
    assert [e.new for e in refs.reflog("HEAD")] == [A]


def test_delete_ref_keeps_reflog(tmp_path):
    refs = RefStore(tmp_path)
    refs.update("refs/heads/x", A, expected=None)
    refs.update("refs/heads/x", None, expected=A, message="delete")
    assert refs.read_raw("refs/heads/x") is None
    assert refs.reflog("refs/heads/x")[-1].old == A


def test_torn_reflog_line_is_skipped(tmp_path):
    refs = RefStore(tmp_path)
    refs.update("refs/heads/main", A, expected=None)
    with open(refs.log_path("refs/heads/main"), "a") as handle:
        handle.write('{"old": null, "new": "bb')  # a crash mid-append
    assert len(refs.reflog("refs/heads/main")) == 1


def test_lock_left_by_dead_process_is_broken(tmp_path):
    refs = RefStore(tmp_path)
    refs.update("refs/heads/main", A, expected=None)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(proc.stdout)
    lock = tmp_path / "refs/heads/main.lock"
    lock.write_text(f"pid {dead_pid}\n")
    refs.update("refs/heads/main", B, expected=A)
    assert refs.resolve("refs/heads/main") == B and not lock.exists()


def test_lock_held_by_live_process_times_out(tmp_path, monkeypatch):
    import persona.store.refs as refs_module

    monkeypatch.setattr(refs_module, "LOCK_TIMEOUT_S", 0.2)
    refs = RefStore(tmp_path)
    refs.update("refs/heads/main", A, expected=None)
    (tmp_path / "refs/heads/main.lock").write_text(f"pid {os.getpid()}\n")
    with pytest.raises(Conflict, match="locked"):
        refs.update("refs/heads/main", B, expected=A)
    assert refs.resolve("refs/heads/main") == A


@pytest.mark.parametrize("name", ["", "a/b", "..", "a..b", "../etc", "x\ny", "tab\there", "HEAD", "x.lock",
                                  "-dash", "abcd", "deadbeef", "a" * 101, "sp ace", "a~1", "a^", "a@{1}",
                                  "c:d", "\\x"])
def test_bad_names_are_refused(name):
    with pytest.raises(InvalidInput):
        validate_name(name)


@pytest.mark.parametrize("name", ["listening", "v1.0", "not_rushing", "Timmy-2", "a1b2c3g"])
def test_good_names(name):
    assert validate_name(name) == name
