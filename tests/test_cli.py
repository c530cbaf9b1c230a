"""The CLI as a user meets it: exit codes, one-line errors, --json, an untouched store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clirun import run
from tests.storefix import toy_repo, write_recipe


@pytest.fixture
def store(tmp_path, monkeypatch):
    repo = toy_repo(tmp_path)
    repo.close()
    monkeypatch.setenv("PERSONA_STORE", str(repo.root))
    monkeypatch.chdir(tmp_path)
    return repo.root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("persona.db")}


def test_commit_log_show_diff_rollback_roundtrip(store, tmp_path, capsys):
    r1 = write_recipe(tmp_path / "a.yaml", [("listening", 1.0)])
    r2 = write_recipe(tmp_path / "b.yaml", [("listening", 1.0), ("suggesting", -0.5)])
    first = run(capsys, "commit", "-f", str(r1), "-m", "first")
    assert first.code == 0 and "[main " in first.out
    assert run(capsys, "commit", "-f", str(r2), "-m", "less suggesting").code == 0
    log = json.loads(run(capsys, "log", "--json").out)
    assert [c["message"] for c in log] == ["less suggesting", "first"]
    assert log[0]["recipe"]["vectors"][1] == {"name": "suggesting", "alpha": -0.5, "density": 0.5}
    text = run(capsys, "log").out
    assert "HEAD -> main" in text and "suggesting:-0.5" in text
    diff = run(capsys, "diff", "HEAD~1", "HEAD")
    assert diff.code == 0 and "+ suggesting alpha -0.5" in diff.out
    assert json.loads(run(capsys, "diff", "HEAD~1", "HEAD", "--json").out)["added"][0]["name"] == "suggesting"
    show = json.loads(run(capsys, "show", "HEAD~1", "--json").out)
    assert show["id"] == log[1]["id"]
    back = run(capsys, "rollback", "HEAD~1", "-m", "too far")
    assert back.code == 0 and "undo with" in back.out
    assert json.loads(run(capsys, "log", "--json").out)[0]["message"] == "first"
    reflog = json.loads(run(capsys, "reflog", "--json").out)
    assert "rollback" in reflog[0]["message"]
    assert run(capsys, "rollback", "HEAD@{1}").code == 0
    assert json.loads(run(capsys, "log", "--json").out)[0]["message"] == "less suggesting"


def test_branch_tag_checkout(store, tmp_path, capsys):
    r1 = write_recipe(tmp_path / "a.yaml", [("listening", 1.0)])
    run(capsys, "commit", "-f", str(r1), "-m", "first")
    assert run(capsys, "branch", "exp").code == 0
    assert run(capsys, "tag", "v1").code == 0
    assert "exp" in json.loads(run(capsys, "branch", "--json").out)["branches"]
    assert run(capsys, "checkout", "exp").code == 0
    assert json.loads(run(capsys, "branch", "--json").out)["current"] == "exp"
    assert "v1" in run(capsys, "tag").out


@pytest.mark.parametrize("args, code, message", [
    (["log", "nosuch"], 3, "unknown revision"),
    (["show", "HEAD~5"], 3, "no commits yet"),
    (["rollback"], 2, "exactly one of"),
    (["diff", "HEAD~x", "HEAD"], 2, "cannot parse revision"),
    (["branch", "../evil"], 2, "path separator"),
    (["tag", "a\x01b"], 2, "control characters"),
    (["gc", "--prune-older-than", "later"], 2, "duration"),
    (["base", "show", "nobase"], 3, "no base named"),
    (["vector", "show", "nothing"], 3, "no vector named"),
    (["vector", "import", "x"], 2, "exactly one of --adapter"),
])
def test_bad_input_is_one_line_error(store, capsys, args, code, message):
    before = _snapshot(store)
    result = run(capsys, *args)
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0]
    assert len(lines) <= 2 and (len(lines) == 1 or lines[1].startswith("hint: "))
    assert "Traceback" not in result.err
    assert _snapshot(store) == before


@pytest.mark.parametrize("recipe, message", [
    ({"base": "toy", "method": "slerp", "vectors": [{"name": "listening"}]}, "unknown method"),
    ({"base": "toy", "vectors": [{"name": "nosuch", "alpha": 1}]}, "no vector named"),
    ({"base": "toy", "density": 2, "vectors": [{"name": "listening"}]}, "outside (0, 1]"),
    ({"base": "toy", "lambda": ".nan", "vectors": [{"name": "listening"}]}, "lambda"),
    ({"base": "toy", "vectors": []}, "selects no vector"),
    ({"base": "toy", "extra": 1, "vectors": [{"name": "listening"}]}, "unknown key"),
])
def test_bad_recipe_commit_changes_nothing(store, tmp_path, capsys, recipe, message):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe).replace("'.nan'", ".nan"))
    before = _snapshot(store)
    result = run(capsys, "commit", "-f", str(path), "-m", "bad")
    assert result.code != 0 and message in result.err
    assert _snapshot(store) == before


def test_no_store_is_explained(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PERSONA_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    result = run(capsys, "log")
    assert result.code == 3 and "no persona store" in result.err and "persona init" in result.err


def test_store_is_found_walking_up(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PERSONA_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "init").code == 0
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert run(capsys, "log").code == 0
    assert run(capsys, "init").code == 0  # idempotent
    result = run(capsys, "fsck", "--json")
    assert result.code == 0 and json.loads(result.out)["ok"]


def test_fsck_exit_code_on_corruption(store, capsys):
    obj_file = next(p for p in (store / "objects").rglob("*") if p.is_file())
    obj_file.chmod(0o644)
    obj_file.write_bytes(obj_file.read_bytes() + b"x")
    result = run(capsys, "fsck")
    assert result.code == 1 and "corrupt" in result.out


def test_debug_env_shows_traceback(store, monkeypatch):
    env = {**os.environ, "PERSONA_STORE": str(store), "PERSONA_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-m", "persona", "log", "nosuch"], capture_output=True, text=True,
                          env=env)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_history_commands_do_not_import_torch(store, tmp_path):
    r1 = write_recipe(tmp_path / "a.yaml", [("listening", 1.0)])
    r2 = write_recipe(tmp_path / "b.yaml", [("listening", 0.5)])
    code = f"""
import sys
from persona.cli.app import main
for argv in (["--help"], ["commit", "-f", {str(r1)!r}, "-m", "a"], ["commit", "-f", {str(r2)!r}, "-m", "b"],
             ["log"], ["show", "HEAD"], ["diff", "HEAD~1", "HEAD"], ["rollback", "HEAD~1"], ["reflog"]):
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code, (argv, exc.code)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "peft", "safetensors"))
assert not heavy, heavy
"""
    env = {**os.environ, "PERSONA_STORE": str(store)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


def test_help_has_examples(capsys):
    for command in (["commit"], ["log"], ["rollback"], ["base", "import"], ["vector", "import"], ["gc"]):
        result = run(capsys, *command, "--help")
        assert result.code == 0 and "xample" in result.out, command
