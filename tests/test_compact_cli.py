"""``persona compact`` driven through typer's CliRunner on a throwaway app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from persona.cli.compact_cmd import register
from persona.errors import InvalidInput, NotFound

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SESSION = EXAMPLES / "sessions" / "hermes_debug_session.json"


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:
        """persona (test app)."""

    return app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def session(tmp_path: Path) -> Path:
    path = tmp_path / "session.json"
    shutil.copy(SESSION, path)
    return path


def test_help_has_an_example(app: typer.Typer, runner: CliRunner) -> None:
    result = runner.invoke(app, ["compact", "--help"])
    assert result.exit_code == 0
    assert "persona compact session.json" in result.stdout


def test_file_to_file_with_table_report(
    app: typer.Typer, runner: CliRunner, session: Path, tmp_path: Path
) -> None:
    before = session.read_bytes()
    out = tmp_path / "compacted.json"
    result = runner.invoke(app, ["compact", str(session), "-o", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert session.read_bytes() == before
    compacted = json.loads(out.read_bytes())
    assert len(compacted["messages"]) < len(json.loads(before)["messages"])
    assert "collapse_tool_pairs" in result.stdout and "tokens (approx)" in result.stdout


def test_same_bytes_every_time(
    app: typer.Typer, runner: CliRunner, session: Path, tmp_path: Path
) -> None:
    outputs = []
    for name in ("a.json", "b.json"):
        result = runner.invoke(
            app, ["compact", str(session), "-o", str(tmp_path / name), "--force"]
        )
        assert result.exit_code == 0
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    again = runner.invoke(
        app, ["compact", str(tmp_path / "a.json"), "-o", str(tmp_path / "c.json"), "--force"]
    )
    assert again.exit_code == 0
    assert (tmp_path / "c.json").read_bytes() == outputs[0]


def test_stdin_to_stdout_with_json_report_on_stderr(app: typer.Typer, runner: CliRunner) -> None:
    data = SESSION.read_bytes()
    result = runner.invoke(app, ["compact", "-", "--force", "--json"], input=data)
    assert result.exit_code == 0, result.output
    compacted = json.loads(result.stdout)
    assert compacted["session_id"] == "20260327_101500_ab12cd"
    report = json.loads(result.stderr)
    assert report["source"] == "<stdin>" and report["compacted"] is True
    assert report["tokens"]["after"] < report["tokens"]["before"]


def test_file_to_stdout(app: typer.Typer, runner: CliRunner, session: Path) -> None:
    result = runner.invoke(app, ["compact", str(session), "--context-window", "100000"])
    assert result.exit_code == 0
    assert result.stdout.encode() == session.read_bytes()
    assert "unchanged" in result.stderr


def test_directory(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    source = tmp_path / "sessions"
    shutil.copytree(EXAMPLES / "sessions", source)
    out = tmp_path / "compacted"
    result = runner.invoke(app, ["compact", str(source), "-o", str(out), "--force", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["files"]) == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "hermes_debug_session.json",
        "openai_chat.json",
    ]
    result = runner.invoke(app, ["compact", str(source), "--force"])
    assert result.exit_code != 0
    assert isinstance(result.exception, InvalidInput)


def test_check_exit_codes(app: typer.Typer, runner: CliRunner, session: Path) -> None:
    over = runner.invoke(app, ["compact", str(session), "--check", "--context-window", "2000"])
    assert over.exit_code == 1
    assert ">= threshold" in over.stdout
    under = runner.invoke(
        app, ["compact", str(session), "--check", "--context-window", "1000000", "--json"]
    )
    assert under.exit_code == 0
    assert json.loads(under.stdout)["triggered"] is False
    no_window = runner.invoke(app, ["compact", str(session), "--check"])
    assert no_window.exit_code != 0
    assert isinstance(no_window.exception, InvalidInput)


def test_check_on_stdin_and_directory(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["compact", "-", "--check", "--context-window", "2000"], input=SESSION.read_bytes()
    )
    assert result.exit_code == 1
    result = runner.invoke(
        app, ["compact", str(EXAMPLES / "sessions"), "--check", "--context-window", "10000000"]
    )
    assert result.exit_code == 0
    assert "total:" in result.stdout


def test_config_and_tokenizer_options(
    app: typer.Typer, runner: CliRunner, session: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("compaction:\n  keep_tool_summary: false\n")
    result = runner.invoke(
        app,
        [
            "compact",
            str(session),
            "-o",
            str(tmp_path / "o.json"),
            "--force",
            "--json",
            "--config",
            str(config),
        ],
    )
    assert result.exit_code == 0
    rules = {rule["name"]: rule["enabled"] for rule in json.loads(result.stdout)["rules"]}
    assert rules["collapse_tool_pairs"] is False
    bad = runner.invoke(
        app, ["compact", str(session), "--force", "--tokenizer", str(tmp_path / "none")]
    )
    assert isinstance(bad.exception, NotFound)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"not json", "not valid JSON"),
        (b'[{"role": "user", "content": "x"}, {"role": "ghost"}]', "message 1: unknown role"),
    ],
)
def test_bad_input_fails_naming_the_problem(
    app: typer.Typer, runner: CliRunner, payload: bytes, needle: str
) -> None:
    result = runner.invoke(app, ["compact", "-", "--force"], input=payload)
    assert result.exit_code != 0
    assert isinstance(result.exception, InvalidInput)
    assert needle in str(result.exception)


def test_refuses_to_overwrite_the_input(app: typer.Typer, runner: CliRunner, session: Path) -> None:
    before = session.read_bytes()
    result = runner.invoke(app, ["compact", str(session), "-o", str(session), "--force"])
    assert isinstance(result.exception, InvalidInput)
    assert session.read_bytes() == before


def test_check_rejects_output_options(
    app: typer.Typer, runner: CliRunner, session: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["compact", str(session), "--check", "-o", str(tmp_path / "x.json")]
    )
    assert isinstance(result.exception, InvalidInput)
