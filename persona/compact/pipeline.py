"""From input bytes to output bytes: the trigger decision, files and directories.

The trigger (seed 004): compaction fires when the session uses at least
``trigger_threshold`` of the context window, or always with ``--force``.
``enabled: false`` stops the automatic trigger only; an explicit ``--force`` is
a manual run and still compacts. A decision that needs a window and has none is
an error rather than a guess (see ``tokens.py``).

When nothing is compacted (under the threshold, disabled, or no rule found
anything to do), the output is the input's bytes, unchanged: copying a session
through ``persona compact`` never reformats it for nothing.

Files are never modified in place: an output path that resolves to its input
is refused, and outputs are written with ``atomic_write_bytes`` (a temp file
renamed over the target), so a reader never sees half a session. A directory
is processed in full before anything is written, so a bad session anywhere
leaves no partial output behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from persona.compact.config import CompactionConfig
from persona.compact.engine import compact, measure
from persona.compact.report import CompactionStats, FileReport
from persona.compact.session import dump_session, parse_session
from persona.compact.tokens import TokenCounter
from persona.errors import InvalidInput, NotFound, StoreError
from persona.fsutil import atomic_write_bytes

_WINDOW_HINT = (
    "pass --context-window N, or a --tokenizer whose config.json has max_position_embeddings "
    "(or use --force to compact regardless of the threshold)"
)


@dataclass(frozen=True)
class Result:
    """The bytes to write for one input, and its report."""

    output: bytes
    report: FileReport


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _window(counter: TokenCounter, context_window: int | None) -> int | None:
    return context_window if context_window is not None else counter.context_window


def _report(
    *,
    source: str,
    output: str | None,
    config: CompactionConfig,
    counter: TokenCounter,
    window: int | None,
    forced: bool,
    triggered: bool | None,
    compacted: bool,
    reason: str,
    stats: CompactionStats,
    check_only: bool = False,
) -> FileReport:
    return FileReport(
        source=source,
        output=output,
        tokenizer=counter.name,
        approx=counter.approx,
        context_window=window,
        trigger_threshold=config.trigger_threshold,
        enabled=config.enabled,
        forced=forced,
        triggered=triggered,
        compacted=compacted,
        reason=reason,
        stats=stats,
        check_only=check_only,
    )


def _trigger(tokens: int, window: int | None, config: CompactionConfig) -> tuple[bool | None, str]:
    if window is None:
        return None, "no context window"
    usage = tokens / window
    if usage >= config.trigger_threshold:
        return True, f"usage {_pct(usage)} >= threshold {_pct(config.trigger_threshold)}"
    return False, f"usage {_pct(usage)} < threshold {_pct(config.trigger_threshold)}"


def check_bytes(
    data: bytes,
    *,
    source: str,
    config: CompactionConfig,
    counter: TokenCounter,
    context_window: int | None = None,
) -> FileReport:
    """Measure a session against the trigger without compacting it (``--check``)."""
    session = parse_session(data, source)
    window = _window(counter, context_window)
    if window is None:
        raise InvalidInput(
            f"{source}: no context window to check the trigger against", _WINDOW_HINT
        )
    stats = measure(session, config, counter)
    triggered, reason = _trigger(stats.tokens_before, window, config)
    return _report(
        source=source,
        output=None,
        config=config,
        counter=counter,
        window=window,
        forced=False,
        triggered=triggered,
        compacted=False,
        reason=reason,
        stats=stats,
        check_only=True,
    )


def process_bytes(
    data: bytes,
    *,
    source: str,
    output: str | None,
    config: CompactionConfig,
    counter: TokenCounter,
    context_window: int | None = None,
    force: bool = False,
) -> Result:
    """Decide, compact if triggered, and return the output bytes with a report."""
    session = parse_session(data, source)
    window = _window(counter, context_window)
    common = {
        "source": source,
        "output": output,
        "config": config,
        "counter": counter,
        "window": window,
    }
    if not force:
        stats = measure(session, config, counter)
        if not config.enabled:
            reason = "disabled in config (enabled: false); --force compacts anyway"
            report = _report(
                **common, forced=False, triggered=None, compacted=False, reason=reason, stats=stats
            )
            return Result(data, report)
        if window is None:
            raise InvalidInput(f"{source}: no context window to decide the trigger", _WINDOW_HINT)
        triggered, reason = _trigger(stats.tokens_before, window, config)
        if not triggered:
            report = _report(
                **common, forced=False, triggered=False, compacted=False, reason=reason, stats=stats
            )
            return Result(data, report)
    new_session, stats = compact(session, config, counter)
    triggered, reason = _trigger(stats.tokens_before, window, config)
    if force:
        reason = "forced" if triggered is None else f"forced; {reason}"
    compacted = new_session is not session
    if not compacted:
        reason += "; nothing to compact"
    report = _report(
        **common, forced=force, triggered=triggered, compacted=compacted, reason=reason, stats=stats
    )
    return Result(dump_session(new_session) if compacted else data, report)


def read_input(path: Path) -> bytes:
    """Read an input file, turning OS errors into one-line persona errors."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"session file not found: {path}", "check the path") from exc
    except IsADirectoryError as exc:
        raise InvalidInput(f"{path} is a directory", "pass -o DIR to compact a directory") from exc
    except OSError as exc:
        raise StoreError(
            f"cannot read {path}: {exc.strerror or exc}", "check the path and its permissions"
        ) from exc


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def session_files(root: Path, exclude: Path | None = None) -> list[Path]:
    """Every ``*.json`` under ``root`` (recursively), skipping hidden paths and ``exclude``.

    Sorted by relative path so a directory always processes in the same order.
    """
    excluded = exclude.resolve() if exclude is not None else None
    found = []
    for path in root.rglob("*.json"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if excluded is not None and path.resolve().is_relative_to(excluded):
            continue
        found.append(relative)
    return [root / relative for relative in sorted(found, key=lambda p: p.as_posix())]


def compact_file(
    source: Path,
    output: Path | None,
    *,
    config: CompactionConfig,
    counter: TokenCounter,
    context_window: int | None = None,
    force: bool = False,
) -> Result:
    """Compact one file; write the result to ``output`` when given (atomically)."""
    if output is not None and output.is_dir():
        output = output / source.name
    if output is not None and output.exists() and _same_file(source, output):
        raise InvalidInput(
            f"output {output} is the input file",
            "the input is never modified: pass another -o path",
        )
    result = process_bytes(
        read_input(source),
        source=str(source),
        output=str(output) if output is not None else None,
        config=config,
        counter=counter,
        context_window=context_window,
        force=force,
    )
    if output is not None:
        atomic_write_bytes(output, result.output)
    return result


def compact_directory(
    source: Path,
    output: Path,
    *,
    config: CompactionConfig,
    counter: TokenCounter,
    context_window: int | None = None,
    force: bool = False,
) -> list[Result]:
    """Compact every session under ``source`` into the same relative paths under ``output``."""
    if output.exists() and not output.is_dir():
        raise InvalidInput(
            f"output {output} is a file", "give a directory for -o when the input is one"
        )
    if _same_file(source, output):
        raise InvalidInput(
            f"output directory {output} is the input directory",
            "the input is never modified: pass another -o directory",
        )
    results = []
    targets = []
    for path in session_files(source, exclude=output):
        target = output / path.relative_to(source)
        results.append(
            process_bytes(
                read_input(path),
                source=str(path),
                output=str(target),
                config=config,
                counter=counter,
                context_window=context_window,
                force=force,
            )
        )
        targets.append(target)
    for target, result in zip(targets, results, strict=True):
        atomic_write_bytes(target, result.output)
    return results


def check_paths(
    paths: list[Path],
    *,
    config: CompactionConfig,
    counter: TokenCounter,
    context_window: int | None = None,
) -> list[FileReport]:
    """``--check`` over several files."""
    return [
        check_bytes(
            read_input(path),
            source=str(path),
            config=config,
            counter=counter,
            context_window=context_window,
        )
        for path in paths
    ]
