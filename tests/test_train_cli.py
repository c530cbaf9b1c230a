"""persona train and persona vector test through the real entry point, on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from persona.porcelain import models
from persona.repo import Repository
from tests.clirun import run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FAST = ["--steps", "2", "--rank", "4", "--lora-alpha", "8", "--batch-size", "4", "--max-length", "96",
        "--device", "cpu"]


@pytest.fixture
def store(tmp_path, tiny_model_dir) -> Path:
    repo, _ = Repository.init(tmp_path / "store")
    models.import_base(repo, str(tiny_model_dir), name="tiny")
    repo.close()
    return tmp_path / "store"


def test_python_dash_m_entry_point_has_train():
    # `accelerate launch -m persona train ...` starts the CLI the same way.
    proc = subprocess.run([sys.executable, "-m", "persona", "train", "--help"], capture_output=True, text=True,
                          env={**os.environ, "PERSONA_DEBUG": "0"})
    assert proc.returncode == 0, proc.stderr
    for text in ("--data", "--distill", "--section", "--objective", "--resume", "accelerate launch"):
        assert text in proc.stdout


def test_cli_import_does_not_pull_torch():
    code = ("import sys\nfrom persona.cli import app, train_cmds\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft', "
            "'accelerate'))\nassert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_train_show_and_json(store, capsys):
    data = str(EXAMPLES / "train" / "listening.jsonl")
    result = run(capsys, "--store", str(store), "train", "listening", "--data", data, *FAST)
    assert result.code == 0, result.err
    assert "trained vector listening" in result.out and "20 examples" in result.out and "2 steps" in result.out
    shown = run(capsys, "--store", str(store), "vector", "show", "listening")
    assert "training    completed" in shown.out and "over 2 steps" in shown.out
    again = run(capsys, "--store", str(store), "train", "listening", "--data", data, *FAST)
    assert again.code == 4 and "already exists" in again.err
    forced = run(capsys, "--store", str(store), "train", "listening", "--data", data, *FAST, "--force", "--json")
    body = json.loads(forced.out)
    assert forced.code == 0 and body["steps"] == 2 and body["vector"]["kind"] == "lora"
    assert body["id"] == models.show_vector(Repository.open(store), "listening").id


@pytest.mark.parametrize(("argv", "text"), [
    ([], "exactly one of --data or --distill"),
    (["--distill", "SOUL.md"], "--distill needs --section"),
    (["--data", "x.jsonl", "--section", "identity"], "go with --distill"),
    (["--data", "x.jsonl", "--keep-if", "timmy"], "go with --distill"),
    (["--distill", str(EXAMPLES / "aer" / "SOUL.md"), "--section", "identity", "--keep-if", "tim(my"],
     "is not a valid regex"),
    (["--distill", str(EXAMPLES / "aer" / "SOUL.md"), "--section", "Task"], "kind task: task context"),
    (["--distill", str(EXAMPLES / "aer" / "SOUL.md"), "--section", "memory"], "no section 'memory'"),
    (["--distill", str(EXAMPLES / "aer" / "SOUL.md"), "--section", "identity", "--no-builtin-prompts"],
     "--no-builtin-prompts without --prompts"),
    (["--distill", str(EXAMPLES / "aer" / "SOUL.md"), "--section", "identity", "--held-out", "1"], "--held-out"),
    (["--data", "x.jsonl", "--no-cue"], "go with --distill"),
    (["--data", "MISSING.jsonl"], "training data not found"),
    (["--data", str(EXAMPLES / "train" / "listening.jsonl"), "--target-modules", "foo_proj"],
     "'foo_proj' matches no layer"),
    (["--data", str(EXAMPLES / "train" / "listening.jsonl"), "--rank", "0"], "--rank must be at least 1"),
])
def test_train_errors_are_one_line(store, capsys, argv, text):
    result = run(capsys, "--store", str(store), "train", "v", *argv)
    assert result.code != 0 and text in result.err and "Traceback" not in result.err
    assert result.err.startswith("error: ") and "hint: " in result.err
    assert Repository.open(store).refs.list("vector") == {}


def test_interrupt_exits_130_with_a_resume_hint(store, capsys, monkeypatch):
    from persona.train import loop

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "batch_at", stop)
    data = str(EXAMPLES / "train" / "listening.jsonl")
    result = run(capsys, "--store", str(store), "train", "listening", "--data", data, *FAST)
    assert result.code == 130 and "training interrupted after step 0" in result.err
    assert Repository.open(store).refs.list("vector") == {}


def test_vector_test_reports_both_pass_rates(store, capsys, tmp_path):
    data = str(EXAMPLES / "train" / "listening.jsonl")
    assert run(capsys, "--store", str(store), "train", "listening", "--data", data, *FAST).code == 0
    probes = tmp_path / "probes.yaml"
    probes.write_text("- {id: calm, section: task, messages: ['I had a rough day.'], "
                      "checks: {must_not_match: [qqqzzzqqq]}}\n"
                      "- {id: name, section: identity, messages: ['What is your name?'], "
                      "checks: {must_match: [Zephyrine]}}\n")
    result = run(capsys, "--store", str(store), "vector", "test", "listening", "--probes", str(probes),
                 "--max-new-tokens", "4")
    assert result.code == 0, result.err
    assert "pass rate: base 1/2 (50%), with the vector 1/2 (50%)" in result.out
    prompt = tmp_path / "SOUL.md"
    prompt.write_text("## Identity\nYou are Zephyrine.\n\n## Task\nHelp.\n")
    as_json = run(capsys, "--store", str(store), "vector", "test", "listening", "--probes", str(probes),
                  "--prompt", str(prompt), "--without", "identity", "--max-new-tokens", "4", "--json")
    body = json.loads(as_json.out)
    assert body["system"].endswith("without identity") and [p["id"] for p in body["probes"]] == ["calm", "name"]
    assert body["base_pass_rate"] == 0.5 and set(body["probes"][0]["vector"]) == {"passed", "answer", "failures"}
    bad = run(capsys, "--store", str(store), "vector", "test", "listening", "--probes", str(probes),
              "--prompt", str(prompt), "--without", "values")
    assert bad.code == 2 and "unknown section(s) to drop: values" in bad.err
