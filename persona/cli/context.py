"""What every command shares: the store location and output helpers."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer


@dataclass
class State:
    store: Path | None = None


STATE = State()


def open_repo():
    """Open the store chosen by --store, $PERSONA_STORE or discovery."""
    from persona.repo import Repository

    return Repository.open(STATE.store)


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def err(text: str) -> None:
    typer.echo(text, err=True)


def short(oid: str | None) -> str:
    return oid[:12] if oid else "-"


def progress_bar(description: str, total: int | None, unit: str = ""):
    """A rich progress bar on stderr; quiet when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    disable=not sys.stderr.isatty(), transient=False)
