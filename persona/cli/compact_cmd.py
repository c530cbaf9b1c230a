"""``persona compact``: the CLI face of ``persona.compact`` (thin: parse, call, print).

Where things go:

* ``-o PATH``: the compacted session is written there (atomically) and the
  report goes to stdout;
* no ``-o`` (a file or ``-`` for stdin): the compacted session goes to stdout so
  the command works in a pipe, and the report goes to stderr;
* a directory needs ``-o DIR``; its ``*.json`` files are compacted into the
  same relative paths there;
* ``--check`` writes nothing: it prints the usage report and exits 1 when a
  session is at or over the trigger threshold, 0 otherwise.

``--json`` switches the report (not the session) to JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from persona.compact.config import load_config
from persona.compact.pipeline import (
    check_bytes,
    check_paths,
    compact_directory,
    compact_file,
    process_bytes,
    session_files,
)
from persona.compact.report import FileReport, render_json, render_table
from persona.compact.tokens import resolve_tokenizer
from persona.errors import InvalidInput
from persona.fsutil import atomic_write_bytes

EPILOG = """\b
Examples:
  persona compact session.json -o compacted.json --context-window 65536
  persona compact sessions/ -o compacted/ --force
  cat session.json | persona compact - --force > compacted.json
  persona compact session.json --check --tokenizer smollm2
  persona compact session.json --force --json --config compaction.yaml
"""


def _emit_report(reports: list[FileReport], *, as_json: bool, directory: bool, err: bool) -> None:
    text = (
        render_json(reports, directory=directory)
        if as_json
        else render_table(reports, directory=directory)
    )
    typer.echo(text, nl=False, err=err)


def _write_stdout(data: bytes) -> None:
    """Write the session's exact bytes (no newline translation, no re-encoding)."""
    stream = getattr(sys.stdout, "buffer", None)
    sys.stdout.flush()
    if stream is None:
        sys.stdout.write(data.decode("utf-8"))
        sys.stdout.flush()
        return
    stream.write(data)
    stream.flush()


def _read_stdin() -> bytes:
    stream = getattr(sys.stdin, "buffer", None)
    return stream.read() if stream is not None else sys.stdin.read().encode("utf-8")


def register(app: typer.Typer) -> None:
    """Add the ``compact`` command to ``app``."""

    @app.command("compact", epilog=EPILOG)
    def compact_command(
        source: str = typer.Argument(
            ..., metavar="SESSION", help="Session JSON file, a directory of them, or - for stdin."
        ),
        output: Path | None = typer.Option(
            None,
            "-o",
            "--output",
            help="Where to write the compacted session (a directory for a directory).",
        ),
        config: Path | None = typer.Option(
            None,
            "--config",
            help="Compaction YAML (a 'compaction:' mapping); defaults to the seed's values.",
        ),
        tokenizer: str | None = typer.Option(
            None,
            "--tokenizer",
            help="'smollm2', an HF model dir or a tokenizer.json; without it tokens are approx (chars/4).",
        ),
        context_window: int | None = typer.Option(
            None,
            "--context-window",
            min=1,
            help="Context window in tokens; default: max_position_embeddings next to the tokenizer.",
        ),
        force: bool = typer.Option(
            False, "--force", help="Compact even below the trigger threshold."
        ),
        check: bool = typer.Option(
            False,
            "--check",
            help="Write nothing; exit 1 if the session is at or over the trigger threshold.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Compact a chat session with deterministic rules (no model): same input, same bytes.

        Succeeded tool calls become one-line summaries, long tool outputs are truncated, late system messages become markers and runs of assistant messages collapse. User messages and the last N turns are never touched; paths, URLs, tool names and error text always survive.
        """
        cfg = load_config(config)
        counter = resolve_tokenizer(tokenizer)
        if check:
            if output is not None or force:
                raise InvalidInput("--check only measures", "drop -o / --force when using --check")
            if source == "-":
                reports = [
                    check_bytes(
                        _read_stdin(),
                        source="<stdin>",
                        config=cfg,
                        counter=counter,
                        context_window=context_window,
                    )
                ]
                directory = False
            else:
                path = Path(source)
                directory = path.is_dir()
                paths = session_files(path) if directory else [path]
                reports = check_paths(
                    paths, config=cfg, counter=counter, context_window=context_window
                )
            _emit_report(reports, as_json=as_json, directory=directory, err=False)
            if any(report.triggered for report in reports):
                raise typer.Exit(code=1)
            return

        options = {
            "config": cfg,
            "counter": counter,
            "context_window": context_window,
            "force": force,
        }
        if source == "-":
            result = process_bytes(
                _read_stdin(), source="<stdin>", output=str(output) if output else None, **options
            )
            if output is not None:
                atomic_write_bytes(output, result.output)
            else:
                _write_stdout(result.output)
            _emit_report([result.report], as_json=as_json, directory=False, err=output is None)
            return

        path = Path(source)
        if path.is_dir():
            if output is None:
                raise InvalidInput(
                    f"{path} is a directory",
                    "pass -o DIR: compacted sessions keep their relative paths there",
                )
            results = compact_directory(path, output, **options)
            _emit_report([r.report for r in results], as_json=as_json, directory=True, err=False)
            return

        result = compact_file(path, output, **options)
        if output is None:
            _write_stdout(result.output)
        _emit_report([result.report], as_json=as_json, directory=False, err=output is None)
