"""Refs: named pointers to objects, each update a compare-and-swap with a reflog.

Layout (like git): ``HEAD`` holds ``ref: refs/heads/main`` or a commit id;
``refs/heads/*`` are branches, ``refs/tags/*`` tags, ``refs/bases/*`` and
``refs/vectors/*`` name imported bases and vectors. Every change appends a JSON
line to ``logs/<ref>`` (and to ``logs/HEAD`` when HEAD follows that branch), so
nothing a ref ever pointed at is forgotten: rollback is undoable and gc keeps
what the reflog reaches.

Concurrency: a writer takes ``<ref>.lock`` with O_EXCL, checks the current value
against the one it expects, appends the reflog line and renames the lock over the
ref. A lock whose owner died (kill -9) is detected by its pid and broken, so a
crash never wedges the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from persona.errors import Conflict, InvalidInput, NotFound, StoreError
from persona.fsutil import describe_os_error, fsync_dir
from persona.ids import is_id_prefix, is_object_id

NAMESPACES = {"branch": "refs/heads", "tag": "refs/tags", "base": "refs/bases", "vector": "refs/vectors"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_RESERVED = {"HEAD", "ORIG_HEAD", "FETCH_HEAD", "MERGE_HEAD"}
ANY = object()  # expected-old sentinel: update whatever the ref holds now
LOCK_TIMEOUT_S = 10.0


def validate_name(name: str, what: str = "name") -> str:
    """Refuse names that could escape the refs folder or read as revision syntax."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"empty {what}", f"give the {what} as letters, digits, '.', '_' or '-'")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidInput(f"{what} {name!r} contains control characters",
                           "use letters, digits, '.', '_' or '-'")
    if "/" in name or "\\" in name or ".." in name:
        raise InvalidInput(f"{what} {name!r} contains a path separator or '..'",
                           "use letters, digits, '.', '_' or '-'")
    if name in _RESERVED or name.endswith(".lock"):
        raise InvalidInput(f"{what} {name!r} is reserved", "choose another name")
    if not _NAME_RE.match(name):
        raise InvalidInput(f"invalid {what} {name!r}",
                           "start with a letter or digit; then letters, digits, '.', '_' or '-' (max 100)")
    if is_id_prefix(name.lower()) and re.fullmatch(r"[0-9a-fA-F]+", name):
        raise InvalidInput(f"{what} {name!r} looks like an object id",
                           "names made only of hex digits collide with id prefixes; add a letter")
    return name


@dataclass(frozen=True)
class ReflogEntry:
    old: str | None
    new: str | None
    time: float
    message: str

    def to_json(self) -> dict:
        return {"old": self.old, "new": self.new, "time": self.time, "message": self.message}


@dataclass
class _Held:
    path: Path
    consumed: bool = False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RefStore:
    """Refs and reflogs under a store directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- paths -----------------------------------------------------------------
    def ref_path(self, ref: str) -> Path:
        return self.root / ref

    def log_path(self, ref: str) -> Path:
        return self.root / "logs" / ref

    # -- reading ---------------------------------------------------------------
    def read_raw(self, ref: str) -> str | None:
        try:
            return self.ref_path(ref).read_text().strip() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise describe_os_error(exc, self.ref_path(ref)) from exc

    def head_target(self) -> str | None:
        """The branch ref HEAD follows, or None when HEAD is detached."""
        raw = self.read_raw("HEAD")
        if raw and raw.startswith("ref: "):
            return raw[5:]
        return None

    def resolve(self, ref: str) -> str | None:
        """Follow symbolic refs to an object id (None for an unborn branch)."""
        seen = set()
        while True:
            if ref in seen:
                raise StoreError(f"symbolic ref loop at {ref}", "fix HEAD by hand")
            seen.add(ref)
            raw = self.read_raw(ref)
            if raw is None:
                return None
            if raw.startswith("ref: "):
                ref = raw[5:]
                continue
            if not is_object_id(raw):
                raise StoreError(f"ref {ref} holds garbage", "run `persona fsck`")
            return raw

    def list(self, namespace: str) -> dict[str, str]:
        prefix = NAMESPACES[namespace]
        folder = self.root / prefix
        out: dict[str, str] = {}
        if not folder.is_dir():
            return out
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or path.name.endswith(".lock") or not path.is_file():
                continue
            value = self.read_raw(f"{prefix}/{path.name}")
            if value and is_object_id(value):
                out[path.name] = value
        return out

    def all_refs(self) -> Iterator[tuple[str, str]]:
        """Every ref with its direct value (HEAD included, symbolic or not)."""
        head = self.read_raw("HEAD")
        if head:
            yield "HEAD", head
        for namespace, prefix in NAMESPACES.items():
            for name, value in self.list(namespace).items():
                yield f"{prefix}/{name}", value

    def reflog(self, ref: str) -> list[ReflogEntry]:
        path = self.log_path(ref)
        entries: list[ReflogEntry] = []
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return entries
        for line in lines:
            try:
                data = json.loads(line)
                entries.append(ReflogEntry(data["old"], data["new"], float(data["time"]), data["message"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a crash: skip it, keep the rest
        return entries

    def reflog_refs(self) -> list[str]:
        logs = self.root / "logs"
        if not logs.is_dir():
            return []
        return sorted(str(p.relative_to(logs)) for p in logs.rglob("*") if p.is_file())

    # -- locking ---------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, ref: str) -> Iterator[_Held]:
        lock = self.ref_path(ref).with_name(self.ref_path(ref).name + ".lock")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise describe_os_error(exc, lock.parent) from exc
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        delay = 0.002
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                self._break_if_stale(lock)
                if time.monotonic() > deadline:
                    raise Conflict(f"ref {ref} is locked by another persona process",
                                   f"wait and retry; if no persona is running, delete {lock}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            except OSError as exc:
                raise describe_os_error(exc, lock) from exc
        held = _Held(lock)
        try:
            os.write(fd, f"pid {os.getpid()}\n".encode())
            os.close(fd)
            yield held
        finally:
            # Once the lock was renamed over the ref, the name may already belong
            # to the next writer: only remove a lock we still hold.
            if not held.consumed:
                lock.unlink(missing_ok=True)

    @staticmethod
    def _break_if_stale(lock: Path) -> None:
        try:
            text = lock.read_text()
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        pid = None
        if text.startswith("pid "):
            with contextlib.suppress(ValueError):
                pid = int(text.split()[1])
        # A lock with a dead owner, or an empty one older than a few seconds
        # (killed between create and write), is left over from a crash.
        if (pid is not None and not _pid_alive(pid)) or (pid is None and age > 5):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    # -- writing ---------------------------------------------------------------
    def _append_log(self, ref: str, entry: ReflogEntry) -> None:
        path = self.log_path(ref)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry.to_json(), sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise describe_os_error(exc, path) from exc

    def update(self, ref: str, new: str | None, expected: object = ANY, message: str = "",
               symbolic: bool = False) -> None:
        """Compare-and-swap ``ref`` to ``new`` (None deletes it).

        ``expected`` is the direct value the caller read (None: the ref must not
        exist); when the ref holds something else the update fails with Conflict
        and nothing changes.
        """
        with self._lock(ref) as held:
            lock = held.path
            current = self.read_raw(ref)
            if expected is not ANY and current != expected:
                raise Conflict(f"ref {ref} changed under us (expected {str(expected)[:12]}, "
                               f"found {str(current)[:12]})", "another persona process moved it; retry")
            entry = ReflogEntry(None if current is None or current.startswith("ref: ") else current,
                                None if symbolic else new, time.time(), message)
            path = self.ref_path(ref)
            try:
                if new is None:
                    if ref != "HEAD":
                        self._append_log(ref, entry)
                    path.unlink(missing_ok=True)
                    fsync_dir(path.parent)
                    return
                text = (f"ref: {new}" if symbolic else new) + "\n"
                with open(lock, "w", encoding="ascii") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                if not symbolic:
                    self._append_log(ref, entry)
                    if ref != "HEAD" and self.head_target() == ref:
                        self._append_log("HEAD", entry)
                os.replace(lock, path)
                held.consumed = True
                fsync_dir(path.parent)
            except OSError as exc:
                raise describe_os_error(exc, path) from exc

    def delete_log(self, ref: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.log_path(ref).unlink()


def require(value: str | None, what: str) -> str:
    if value is None:
        raise NotFound(f"{what} does not exist", "list what exists with `persona log` or `persona branch`")
    return value
