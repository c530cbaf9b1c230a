"""Damaged objects: fsck names each one, build and merge refuse to use them, --repair rebuilds the index.

Through the CLI, on a copy of the template store (tests/faultkit.py): a flipped
byte, a truncated object, a missing object and an index row naming a missing
object are each reported by ``persona fsck`` with the object's id; ``merge``
and ``build`` re-hash every blob they read, so a damaged base or vector blob
stops them with a CorruptObject error naming it (exit 5) instead of producing
wrong weights, and no output directory appears. ``persona fsck --repair``
rebuilds a deleted database from the objects and refs.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from persona.store import objects as obj
from tests import faultkit as fk


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir, tiny_lora_adapter, tiny_finetuned_dir):
    z = fk.zygote(tmp_path_factory.mktemp("zygote"))
    tpl = fk.template(z, tmp_path_factory.mktemp("template"), {
        "model": tiny_model_dir, "adapter": tiny_lora_adapter[0], "finetuned": tiny_finetuned_dir})
    return z, tpl


def _ids(store: Path) -> dict[str, str]:
    """Named objects of the template: a touched and an untouched base blob, a vector factor, ..."""
    repo = fk._open(store)
    try:
        base = repo.get(repo.base_id("tiny"), obj.Base)
        tree = repo.get(base.weights, obj.Tree)
        listening = repo.get(repo.vector_id("listening"), obj.Vector)
        touched_name = sorted(listening.factors)[0]
        untouched = sorted(n for n in tree.entries if "embed_tokens" in n)[0]
        head = repo.head()
        recipe = repo.commit(head).recipe
        build = next(repo.get(oid, obj.Build) for oid in repo.objects.iter_ids()
                     if repo.objects.kind_of(oid) == "build" and repo.get(oid, obj.Build).recipe == recipe)
        merged = repo.get(build.weights, obj.Tree).entries[touched_name].blob
        assert merged != tree.entries[touched_name].blob
        return {"touched": tree.entries[touched_name].blob, "untouched": tree.entries[untouched].blob,
                "factor": listening.factors[touched_name].A, "merged": merged, "build-tree": build.weights,
                "head": head, "recipe": recipe, "config": base.files["config.json"]}
    finally:
        repo.close()


def _path(store: Path, oid: str) -> Path:
    return store / "objects" / oid[:2] / oid[2:]


def flip(store: Path, oid: str, at: float = 0.75) -> None:
    path = _path(store, oid)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(store: Path, oid: str) -> None:
    path = _path(store, oid)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _problems(z: fk.Zygote, store: Path) -> dict[str, str]:
    result = z.run(["fsck", "--json"], store)
    assert result.code == 1, (result.code, result.err)
    report = result.json()
    assert not report["ok"]
    return {p["id"]: p["what"] for p in report["problems"]}


def test_fsck_names_each_kind_of_damage(env, tmp_path):
    z, tpl = env
    store = fk.copy_store(tpl.store, tmp_path / "store")
    ids = _ids(store)
    flip(store, ids["touched"])
    truncate(store, ids["config"])
    _path(store, ids["factor"]).unlink()
    ghost = "e" * 64
    with sqlite3.connect(store / "persona.db") as db:
        db.execute("INSERT INTO vectors (id, name, kind, base_id, tensors, parameters, provenance, created) "
                   "VALUES (?, 'ghost', 'lora', ?, 1, 1, '{}', 0)", (ghost, ghost))
    problems = _problems(z, store)
    assert problems[ids["touched"]] == "corrupt"
    assert problems[ids["config"]] == "corrupt"
    assert problems[ids["factor"]] == "missing"
    assert problems[ghost] == "db-orphan"
    text = z.run(["fsck"], store)
    assert text.code == 1
    for oid in (ids["touched"], ids["config"], ids["factor"], ghost):
        assert oid[:12] in text.out, oid
    # --repair drops the orphan row; the damaged objects stay reported (they need a backup)
    repaired = z.run(["fsck", "--repair", "--json"], store)
    assert repaired.code == 1
    left = {p["id"]: p["what"] for p in repaired.json()["problems"]}
    assert ghost not in left and left[ids["touched"]] == "corrupt" and left[ids["factor"]] == "missing"
    assert ghost not in fk.snapshot(store).rows["vectors"]


def test_repair_rebuilds_a_deleted_database(env, tmp_path):
    z, tpl = env
    store = fk.copy_store(tpl.store, tmp_path / "store")
    before = fk.snapshot(store)
    log_before = fk.ok(z.run(["log", "--json"], store)).json()
    for path in store.glob("persona.db*"):
        path.unlink()
    result = fk.ok(z.run(["fsck", "--repair", "--json"], store), "fsck --repair")
    report = result.json()
    assert report["ok"]
    assert report["repaired"] == {"commits": len(before.rows["commits"]), "vectors": len(before.rows["vectors"]),
                                  "bases": len(before.rows["bases"]), "builds": len(before.rows["builds"])}
    assert fk.snapshot(store).rows == before.rows
    fk.fsck_ok(z, store, "repair")
    assert fk.ok(z.run(["log", "--json"], store)).json() == log_before
    text = fk.ok(z.run(["fsck", "--repair"], store))
    assert "repaired index" in text.out


@pytest.mark.parametrize("which", ["touched", "factor"])
def test_merge_refuses_a_corrupt_blob(env, tmp_path, which):
    z, tpl = env
    store = fk.copy_store(tpl.store, tmp_path / "store")
    oid = _ids(store)[which]
    flip(store, oid)
    before = fk.snapshot(store)
    result = z.run(["merge", "-f", str(tpl.recipes["dare"]), "-m", "on damaged weights"], store)
    fk.assert_clean_error(result, f"merge over a corrupt {which} blob")
    assert result.code == 5 and "corrupt" in result.err and oid[:12] in result.err, result.err
    after = fk.snapshot(store)
    assert after.refs == before.refs and after.reflogs == before.reflogs
    assert after.rows["commits"] == before.rows["commits"] and after.rows["builds"] == before.rows["builds"]
    assert _problems(z, store) == {oid: "corrupt"}


@pytest.mark.parametrize("damage", ["flip-untouched", "flip-merged", "truncate", "delete", "flip-tree",
                                    "flip-recipe", "flip-config"])
def test_build_refuses_a_damaged_object(env, tmp_path, damage):
    z, tpl = env
    store = fk.copy_store(tpl.store, tmp_path / "store")
    ids = _ids(store)
    # what a build of HEAD reads: its cached merge (tree + merged blobs), the base blobs no vector
    # touches, the base's files, the recipe
    target = {"flip-untouched": "untouched", "flip-merged": "merged", "truncate": "untouched",
              "delete": "untouched", "flip-tree": "build-tree", "flip-recipe": "recipe",
              "flip-config": "config"}[damage]
    oid = ids[target]
    if damage == "truncate":
        truncate(store, oid)
    elif damage == "delete":
        _path(store, oid).unlink()
    else:
        flip(store, oid)
    out_parent = tmp_path / "builds"
    out_parent.mkdir()
    # HEAD's merge is cached: the build reads the blobs it reuses from the base, and re-hashes each
    result = z.run(["build", "HEAD", "-o", str(out_parent / "model")], store)
    fk.assert_clean_error(result, f"build with {damage}")
    assert oid[:12] in result.err, result.err
    assert result.code == (3 if damage == "delete" else 5), result.err
    assert list(out_parent.iterdir()) == [], "a failed build left files behind"


def test_a_clean_build_after_the_damage_is_repaired(env, tmp_path):
    """Control: the same build succeeds once the object is restored, and matches a build from the intact store."""
    z, tpl = env
    store = fk.copy_store(tpl.store, tmp_path / "store")
    oid = _ids(store)["untouched"]
    good = _path(store, oid).read_bytes()
    flip(store, oid)
    assert z.run(["build", "HEAD", "-o", str(tmp_path / "a")], store).code == 5
    path = _path(store, oid)
    path.write_bytes(good)
    path.chmod(0o444)
    fk.ok(z.run(["build", "HEAD", "-o", str(tmp_path / "a")], store))
    reference = fk.copy_store(tpl.store, tmp_path / "intact")
    fk.ok(z.run(["build", "HEAD", "-o", str(tmp_path / "b")], reference))
    files_a = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    files_b = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    assert files_a == files_b
    index = json.loads(files_a["model.safetensors.index.json"])
    assert index["weight_map"]
