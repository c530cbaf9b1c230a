"""Revision syntax: turn what the user typed into an object id.

Accepted: ``HEAD``, a branch, a tag, a full id or a unique prefix (4+ hex
digits), each optionally followed by ``~N`` / ``^`` (N-th first parent) and
``name@{N}`` (the value the ref had N updates ago, from the reflog).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from persona.errors import AmbiguousRevision, InvalidInput, NotFound
from persona.ids import is_id_prefix, is_object_id
from persona.store.refs import NAMESPACES

if TYPE_CHECKING:
    from persona.repo import Repository

_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]|\.\.|^\.")
_REV_RE = re.compile(r"^(?P<name>[^~^@]+)(?:@\{(?P<reflog>\d+)\})?(?P<suffix>(?:~\d*|\^)*)$")


def expand_prefix(repo: Repository, prefix: str, kind: str | None = None) -> str:
    prefix = prefix.lower()
    if is_object_id(prefix) and repo.objects.has(prefix):
        return prefix
    matches = [oid for oid in _ids_with_prefix(repo, prefix)
               if kind is None or repo.objects.kind_of(oid) == kind]
    if not matches:
        raise NotFound(f"no {kind or 'object'} with id {prefix}", "check the id with `persona log`")
    if len(matches) > 1:
        raise AmbiguousRevision(f"id prefix {prefix} is ambiguous ({len(matches)} objects)",
                                "type more digits of the id")
    return matches[0]


def _ids_with_prefix(repo: Repository, prefix: str) -> list[str]:
    root = getattr(repo.objects, "root", None)
    if root is not None:
        folder = root / prefix[:2]
        if not folder.is_dir():
            return []
        return [prefix[:2] + p.name for p in folder.iterdir()
                if (prefix[:2] + p.name).startswith(prefix) and is_object_id(prefix[:2] + p.name)]
    return [oid for oid in repo.objects.iter_ids() if oid.startswith(prefix)]


def resolve_named(repo: Repository, namespace: str, name_or_id: str) -> str:
    """A base or vector by name (its ref) or by id / id prefix."""
    value = repo.refs.read_raw(f"{NAMESPACES[namespace]}/{name_or_id}") if "/" not in name_or_id else None
    if value:
        return value
    if is_id_prefix(name_or_id.lower()):
        try:
            return expand_prefix(repo, name_or_id, namespace)
        except NotFound:
            pass
    listing = ", ".join(sorted(repo.refs.list(namespace))) or "none yet"
    raise NotFound(f"no {namespace} named {name_or_id!r}",
                   f"known {namespace}s: {listing}; see `persona {namespace} list`")


def _base_ref_value(repo: Repository, name: str, reflog_index: int | None) -> str:
    candidates = ["HEAD"] if name == "HEAD" else [f"refs/heads/{name}", f"refs/tags/{name}"]
    for ref in candidates:
        if ref != "HEAD" and repo.refs.read_raw(ref) is None:
            continue
        if reflog_index is not None:
            entries = repo.refs.reflog(ref)
            if reflog_index >= len(entries):
                raise NotFound(f"{name}@{{{reflog_index}}}: the reflog of {name} has only "
                               f"{len(entries)} entries", "see `persona reflog`")
            value = entries[-1 - reflog_index].new
            if value is None:
                raise NotFound(f"{name}@{{{reflog_index}}} was a deletion", "pick another entry")
            return value
        value = repo.refs.resolve(ref)
        if value is None:
            raise NotFound(f"{name} has no commits yet", "record one with `persona commit -f RECIPE`")
        return value
    if reflog_index is None and is_id_prefix(name.lower()):
        return expand_prefix(repo, name, "commit")
    raise NotFound(f"unknown revision {name!r}", "use HEAD, a branch, a tag or a commit id prefix")


def resolve(repo: Repository, rev: str) -> str:
    """Resolve a revision to a commit id."""
    match = _REV_RE.match(rev.strip())
    if not match or _UNSAFE_NAME.search(match["name"]):
        # a name with a path separator, '..', a leading '.' or a control character
        # could only reach outside refs/ or name a folder ("." is refs/heads itself);
        # branch and tag names never contain them
        raise InvalidInput(f"cannot parse revision {rev!r}", "examples: HEAD, HEAD~2, main@{1}, 3fa9c2")
    reflog_index = int(match["reflog"]) if match["reflog"] is not None else None
    oid = _base_ref_value(repo, match["name"], reflog_index)
    for step in re.findall(r"~\d*|\^", match["suffix"]):
        count = 1 if step in ("^", "~") else int(step[1:])
        for _ in range(count):
            parents = repo.commit(oid).parents
            if not parents:
                raise NotFound(f"{rev} goes past the first commit", "use a smaller number")
            oid = parents[0]
    if repo.objects.kind_of(oid) != "commit":
        raise InvalidInput(f"{rev} is not a commit", "give a commit revision")
    return oid
