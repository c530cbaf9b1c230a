"""The trigger decision, the report, and file / directory handling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from persona.compact import (
    ApproxCounter,
    CompactionConfig,
    Result,
    check_bytes,
    compact_directory,
    compact_file,
    process_bytes,
    render_json,
    render_table,
)
from persona.compact.report import total_stats
from persona.errors import InvalidInput, NotFound

EXAMPLE = (
    Path(__file__).resolve().parent.parent / "examples" / "sessions" / "hermes_debug_session.json"
)
CHAT = EXAMPLE.parent / "openai_chat.json"


def _process(data: bytes, **kwargs: Any) -> Result:
    options: dict[str, Any] = {
        "source": "s.json",
        "output": None,
        "config": CompactionConfig(),
        "counter": ApproxCounter(),
    }
    options.update(kwargs)
    return process_bytes(data, **options)


def test_under_threshold_returns_the_input_bytes() -> None:
    data = EXAMPLE.read_bytes()
    result = _process(data, context_window=1_000_000)
    assert result.output == data
    report = result.report
    assert report.triggered is False and report.compacted is False
    assert "< threshold" in report.reason


def test_over_threshold_compacts() -> None:
    data = EXAMPLE.read_bytes()
    result = _process(data, context_window=4096)
    report = result.report
    assert report.triggered is True and report.compacted is True
    assert result.output != data
    assert report.stats.tokens_after < report.stats.tokens_before
    assert report.window_freed == pytest.approx(
        (report.stats.tokens_before - report.stats.tokens_after) / 4096
    )


def test_threshold_is_inclusive() -> None:
    data = EXAMPLE.read_bytes()
    tokens = _process(data, force=True).report.stats.tokens_before
    config = CompactionConfig(trigger_threshold=0.5)
    assert _process(data, context_window=tokens * 2, config=config).report.triggered is True
    assert _process(data, context_window=tokens * 2 + 1, config=config).report.triggered is False


def test_trigger_without_a_window_is_an_error_but_force_works() -> None:
    data = EXAMPLE.read_bytes()
    with pytest.raises(InvalidInput, match="no context window"):
        _process(data)
    result = _process(data, force=True)
    assert result.report.compacted is True and result.report.usage_before is None


def test_disabled_config_only_compacts_with_force() -> None:
    data = EXAMPLE.read_bytes()
    config = CompactionConfig(enabled=False)
    assert _process(data, config=config, context_window=100).output == data
    assert _process(data, config=config, force=True).report.compacted is True


def test_nothing_to_compact_keeps_input_bytes() -> None:
    data = CHAT.read_bytes()
    result = _process(data, force=True)
    assert result.output == data
    assert "nothing to compact" in result.report.reason


def test_check_bytes_measures_without_compacting() -> None:
    data = EXAMPLE.read_bytes()
    over = check_bytes(
        data, source="s", config=CompactionConfig(), counter=ApproxCounter(), context_window=1000
    )
    under = check_bytes(
        data, source="s", config=CompactionConfig(), counter=ApproxCounter(), context_window=10**6
    )
    assert over.triggered is True and under.triggered is False
    assert over.check_only is True and over.compacted is False
    assert over.stats.tokens_before == over.stats.tokens_after
    assert "over the threshold" in render_table([over])
    assert "collapse_tool_pairs" not in render_table([over])
    with pytest.raises(InvalidInput, match="no context window"):
        check_bytes(data, source="s", config=CompactionConfig(), counter=ApproxCounter())


def test_report_accounts_per_role_and_per_rule() -> None:
    report = _process(EXAMPLE.read_bytes(), force=True).report
    stats = report.stats
    saved = sum(rule.tokens_saved for rule in stats.rules)
    assert saved == stats.tokens_before - stats.tokens_after
    removed = sum(rule.messages_removed for rule in stats.rules)
    assert removed == stats.messages_before - stats.messages_after
    roles = {role.role: role for role in stats.roles}
    assert roles["user"].messages_before == roles["user"].messages_after
    assert roles["user"].tokens_before == roles["user"].tokens_after
    assert roles["tool"].messages_after < roles["tool"].messages_before
    assert all(rule.enabled for rule in stats.rules)

    data = json.loads(render_json([report]))
    assert data["tokens"] == {"before": stats.tokens_before, "after": stats.tokens_after}
    assert [rule["name"] for rule in data["rules"]] == [
        "collapse_tool_pairs",
        "truncate_tool_output",
        "drop_late_system",
        "collapse_assistant_runs",
    ]
    assert data["approx"] is True and data["tokenizer"] == "approx"
    table = render_table([report])
    assert "tokens (approx)" in table and "collapse_tool_pairs" in table


def test_report_marks_rules_that_are_off() -> None:
    config = CompactionConfig(keep_tool_summary=False, drop_system_after_turn=None)
    report = _process(EXAMPLE.read_bytes(), force=True, config=config).report
    enabled = {rule.name: rule.enabled for rule in report.stats.rules}
    assert enabled == {
        "collapse_tool_pairs": False,
        "truncate_tool_output": True,
        "drop_late_system": False,
        "collapse_assistant_runs": True,
    }
    assert "(off)" in render_table([report])


def test_compact_file_writes_atomically_and_never_touches_the_input(tmp_path: Path) -> None:
    source = tmp_path / "session.json"
    source.write_bytes(EXAMPLE.read_bytes())
    before = source.read_bytes()
    target = tmp_path / "out" / "compacted.json"
    result = compact_file(
        source, target, config=CompactionConfig(), counter=ApproxCounter(), force=True
    )
    assert source.read_bytes() == before
    assert target.read_bytes() == result.output
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(InvalidInput, match="is the input file"):
        compact_file(source, source, config=CompactionConfig(), counter=ApproxCounter(), force=True)
    with pytest.raises(NotFound):
        compact_file(
            tmp_path / "nope.json",
            None,
            config=CompactionConfig(),
            counter=ApproxCounter(),
            force=True,
        )


def test_compact_directory_mirrors_paths_and_fails_before_writing(tmp_path: Path) -> None:
    source = tmp_path / "sessions"
    (source / "nested").mkdir(parents=True)
    (source / "a.json").write_bytes(EXAMPLE.read_bytes())
    (source / "nested" / "b.json").write_bytes(CHAT.read_bytes())
    (source / ".hidden.json").write_text("junk")
    (source / "notes.txt").write_text("not a session")
    output = tmp_path / "compacted"
    results = compact_directory(
        source, output, config=CompactionConfig(), counter=ApproxCounter(), force=True
    )
    assert [r.report.source for r in results] == [
        str(source / "a.json"),
        str(source / "nested" / "b.json"),
    ]
    assert (output / "nested" / "b.json").read_bytes() == CHAT.read_bytes()
    assert (output / "a.json").read_bytes() == results[0].output
    total = total_stats([r.report.stats for r in results])
    assert total.messages_before == sum(r.report.stats.messages_before for r in results)

    (source / "z_bad.json").write_text('[{"role": "tool", "tool_call_id": "x", "content": ""}]')
    fresh = tmp_path / "fresh"
    with pytest.raises(InvalidInput, match="z_bad.json: message 0"):
        compact_directory(
            source, fresh, config=CompactionConfig(), counter=ApproxCounter(), force=True
        )
    assert not fresh.exists()
    with pytest.raises(InvalidInput, match="is the input directory"):
        compact_directory(
            source, source, config=CompactionConfig(), counter=ApproxCounter(), force=True
        )


def test_output_inside_the_input_directory_is_not_read_back(tmp_path: Path) -> None:
    source = tmp_path / "sessions"
    source.mkdir()
    (source / "a.json").write_bytes(EXAMPLE.read_bytes())
    output = source / "compacted"
    options: dict[str, Any] = {
        "config": CompactionConfig(),
        "counter": ApproxCounter(),
        "force": True,
    }
    first = compact_directory(source, output, **options)
    second = compact_directory(source, output, **options)
    assert (
        [r.report.source for r in first]
        == [r.report.source for r in second]
        == [str(source / "a.json")]
    )


def test_output_directory_for_a_single_file(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = compact_file(
        EXAMPLE, out_dir, config=CompactionConfig(), counter=ApproxCounter(), force=True
    )
    assert (out_dir / EXAMPLE.name).read_bytes() == result.output
