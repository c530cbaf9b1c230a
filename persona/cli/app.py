"""The ``persona`` command: global options, error handling, command registration.

Errors the user can act on (PersonaError) print as ``error: ...`` plus a hint
and exit non-zero; anything else is a bug and shows a traceback only with
PERSONA_DEBUG=1. Heavy libraries are imported inside commands, never here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from persona import __version__
from persona.cli.context import STATE
from persona.errors import PersonaError

app = typer.Typer(
    name="persona",
    help="Version control for an LLM's personality: base weights, task vectors and merge recipes "
         "in a content-addressed store.\n\nExample: persona init && persona base import smollm2",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"persona {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    store: Path | None = typer.Option(None, "--store", envvar="PERSONA_STORE",
                                      help="Store directory (default: the nearest ./store walking up)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Global options."""
    STATE.store = store


def _register() -> None:
    from persona.cli import history_cmds, model_cmds, store_cmds

    for module in (store_cmds, model_cmds, history_cmds):
        module.register(app)
    for optional in ("persona.cli.merge_cmds", "persona.cli.compact_cmd", "persona.cli.train_cmds",
                     "persona.cli.aer_cmds"):
        try:
            module = __import__(optional, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != optional:
                raise
            continue
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    debug = os.environ.get("PERSONA_DEBUG") == "1"
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        code = app(args=argv, prog_name="persona", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except PersonaError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            typer.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("error: interrupted; nothing partial was kept", err=True)
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        if code is None:
            code = exc.code if isinstance(exc, SystemExit) else 0
        sys.exit(code or 0)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    except Exception as exc:  # click usage errors and genuine bugs
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        typer.echo(f"error: internal error: {type(exc).__name__}: {exc}", err=True)
        typer.echo("hint: rerun with PERSONA_DEBUG=1 for a traceback, and report it", err=True)
        sys.exit(70)


if __name__ == "__main__":
    main()
