"""commit / log / show / diff / rollback / branch / tag / reflog, and revision syntax."""

from __future__ import annotations

import pytest

from persona import recipes
from persona.errors import AmbiguousRevision, Conflict, InvalidInput, NotFound
from persona.porcelain import history
from persona.store import revparse
from tests.storefix import toy_repo, write_recipe


@pytest.fixture
def repo3(tmp_path):
    """A store with three commits on main."""
    repo = toy_repo(tmp_path)
    r1 = write_recipe(tmp_path / "r1.yaml", [("listening", 1.0)])
    r2 = write_recipe(tmp_path / "r2.yaml", [("listening", 1.0), ("suggesting", -0.5)])
    r3 = write_recipe(tmp_path / "r3.yaml", [("listening", 1.5), ("warmth", 0.3)], method="dare_ties")
    ids = []
    for i, (path, msg) in enumerate([(r1, "one"), (r2, "two"), (r3, "three")]):
        recipe = recipes.resolve(repo, recipes.load(path))
        info = history.commit_recipe(repo, recipe, msg, "tester", now=1_700_000_000 + i * 86400)
        ids.append(info.id)
    return repo, ids


def test_log_is_newest_first_with_refs(repo3):
    repo, ids = repo3
    entries = history.log(repo)
    assert [e.id for e in entries] == ids[::-1]
    assert [e.message for e in entries] == ["three", "two", "one"]
    assert entries[0].refs == ["HEAD -> main"]
    assert entries[1].parents == [ids[0]]
    assert len(history.log(repo, limit=2)) == 2


def test_revision_syntax(repo3):
    repo, ids = repo3
    assert revparse.resolve(repo, "HEAD") == ids[2]
    assert revparse.resolve(repo, "HEAD~1") == ids[1]
    assert revparse.resolve(repo, "HEAD~2") == ids[0]
    assert revparse.resolve(repo, "HEAD^^") == ids[0]
    assert revparse.resolve(repo, "main~1") == ids[1]
    assert revparse.resolve(repo, ids[1][:8]) == ids[1]
    assert revparse.resolve(repo, "HEAD@{1}") == ids[1]
    assert revparse.resolve(repo, "main@{2}") == ids[0]
    with pytest.raises(NotFound):
        revparse.resolve(repo, "HEAD~3")
    with pytest.raises(NotFound):
        revparse.resolve(repo, "nosuchbranch")
    with pytest.raises(NotFound):
        revparse.resolve(repo, "HEAD@{9}")
    with pytest.raises(InvalidInput):
        revparse.resolve(repo, "HEAD~x")
    # "." would be refs/heads itself (a folder): found by the revision fuzzer
    for rev in (".", ".hidden", ".~1", ".@{0}"):
        with pytest.raises(InvalidInput, match="cannot parse revision"):
            revparse.resolve(repo, rev)
    assert repo.refs.read_raw("refs/heads") is None and repo.refs.read_raw("refs/heads/.") is None


def test_ambiguous_prefix(tmp_path):
    from persona.repo import Repository
    from persona.store.object_store import MemoryObjectStore

    repo = Repository(tmp_path, objects=MemoryObjectStore())
    seen: dict[str, str] = {}
    for i in range(5000):  # birthday bound over 16^4 prefixes: a clash comes after ~300
        oid = repo.put_file(str(i).encode())
        if oid[:4] in seen:
            break
        seen[oid[:4]] = oid
    else:
        pytest.fail("no 4-digit prefix clash found")
    with pytest.raises(AmbiguousRevision):
        revparse.expand_prefix(repo, oid[:4])
    assert revparse.expand_prefix(repo, oid) == oid


def test_show_and_diff(repo3):
    repo, ids = repo3
    info = history.show(repo, "HEAD~1")
    assert info.id == ids[1] and info.recipe["method"] == "ties"
    d = history.diff(repo, "HEAD~1", "HEAD")
    assert d.changes["params"]["method"] == {"from": "ties", "to": "dare_ties"}
    assert [v["name"] for v in d.changes["added"]] == ["warmth"]
    assert [v["name"] for v in d.changes["removed"]] == ["suggesting"]
    assert d.changes["changed"][0]["alpha"] == {"from": 1.0, "to": 1.5}
    assert history.diff(repo, "HEAD", "HEAD").empty


def test_rollback_is_undoable_and_keeps_objects(repo3):
    repo, ids = repo3
    move = history.rollback(repo, "HEAD~2", message="too much")
    assert (move.old, move.new) == (ids[2], ids[0])
    assert repo.head() == ids[0]
    assert repo.objects.has(ids[2])  # nothing deleted
    assert "too much" in history.reflog(repo, "HEAD")[0].message
    history.rollback(repo, "HEAD@{1}")  # undo
    assert repo.head() == ids[2]


def test_rollback_to_date(repo3):
    repo, ids = repo3
    # commits at 2023-11-14 22:13, +1 day, +2 days (UTC)
    move = history.rollback(repo, to="2023-11-15")
    assert move.new == ids[1]
    with pytest.raises(NotFound):
        history.rollback(repo, to="2020-01-01")
    with pytest.raises(InvalidInput):
        history.rollback(repo, to="yesterday")
    with pytest.raises(InvalidInput):
        history.rollback(repo)


def test_commit_after_rollback_keeps_old_line_in_reflog(repo3, tmp_path):
    repo, ids = repo3
    history.rollback(repo, "HEAD~1")
    new = history.commit_recipe(repo, recipes.resolve(repo, recipes.load(tmp_path / "r1.yaml")), "fork")
    assert new.parents == [ids[1]]
    assert ids[2] in {line.old for line in history.reflog(repo, "main")}


def test_branch_checkout_tag(repo3):
    repo, ids = repo3
    history.create_branch(repo, "experiment", "HEAD~1")
    assert history.list_refs(repo, "branch") == {"experiment": ids[1], "main": ids[2]}
    with pytest.raises(Conflict):
        history.create_branch(repo, "experiment")
    history.checkout(repo, "experiment")
    assert repo.current_branch() == "experiment" and repo.head() == ids[1]
    with pytest.raises(NotFound):
        history.checkout(repo, "nope")
    history.create_tag(repo, "v1", "main")
    assert revparse.resolve(repo, "v1") == ids[2]
    with pytest.raises(Conflict):
        history.create_tag(repo, "v1")
    with pytest.raises(InvalidInput):
        history.create_tag(repo, "../escape")
    with pytest.raises(InvalidInput):
        history.create_branch(repo, "bad name")


def test_empty_message_refused(repo3, tmp_path):
    repo, ids = repo3
    with pytest.raises(InvalidInput):
        history.commit_recipe(repo, recipes.resolve(repo, recipes.load(tmp_path / "r1.yaml")), "  ")
    assert repo.head() == ids[2]


def test_log_of_empty_store(tmp_path):
    from persona.repo import Repository

    repo, _ = Repository.init(tmp_path / "s")
    assert history.log(repo) == []
