"""The compaction YAML: seed defaults, strict validation naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona.compact import CompactionConfig, config_from_mapping, load_config
from persona.errors import InvalidInput, NotFound

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "compaction.yaml"


def test_seed_defaults() -> None:
    config = CompactionConfig()
    assert config.enabled is True
    assert config.trigger_threshold == 0.60
    assert config.protect_last_n_turns == 5
    assert config.max_tool_output_chars == 500
    assert config.keep_tool_summary is True
    assert config.drop_system_after_turn == 1
    assert config.collapse_consecutive_assistant is True


def test_example_config_spells_out_the_defaults() -> None:
    assert load_config(EXAMPLE_CONFIG) == CompactionConfig()


def test_none_and_empty_give_defaults(tmp_path: Path) -> None:
    assert load_config(None) == CompactionConfig()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == CompactionConfig()
    assert config_from_mapping({"compaction": None}) == CompactionConfig()


def test_values_are_read(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "compaction:\n  trigger_threshold: 0.8\n  protect_last_n_turns: 0\n"
        "  max_tool_output_chars: null\n  drop_system_after_turn: 0\n  error_prefixes: [oops]\n"
    )
    config = load_config(path)
    assert config.trigger_threshold == 0.8
    assert config.protect_last_n_turns == 0
    assert config.max_tool_output_chars is None
    assert config.drop_system_after_turn == 0
    assert config.error_prefixes == ("oops",)


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        (
            {"protect_last_turns": 5},
            "unknown key in compaction config: compaction.protect_last_turns",
        ),
        ({"enabled": "yes"}, "compaction.enabled must be true or false"),
        ({"enabled": 1}, "compaction.enabled must be true or false"),
        ({"protect_last_n_turns": True}, "compaction.protect_last_n_turns must be an integer"),
        ({"protect_last_n_turns": -1}, "compaction.protect_last_n_turns must be at least 0"),
        ({"protect_last_n_turns": None}, "compaction.protect_last_n_turns must be an integer"),
        ({"max_tool_output_chars": 0}, "compaction.max_tool_output_chars must be at least 1"),
        (
            {"max_tool_output_chars": "500"},
            "compaction.max_tool_output_chars must be an integer or null",
        ),
        ({"trigger_threshold": 1.5}, "compaction.trigger_threshold must be in (0, 1]"),
        ({"trigger_threshold": 0}, "compaction.trigger_threshold must be in (0, 1]"),
        ({"trigger_threshold": "60%"}, "compaction.trigger_threshold must be a number"),
        (
            {"error_prefixes": "error"},
            "compaction.error_prefixes must be a list of non-empty strings",
        ),
        (
            {"error_patterns": ["(unclosed"]},
            "compaction.error_patterns: '(unclosed' is not a valid",
        ),
    ],
)
def test_bad_values_name_the_key(section: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidInput) as info:
        config_from_mapping({"compaction": section})
    assert needle in str(info.value)
    assert info.value.hint


def test_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown top-level key in compaction config: compation"):
        config_from_mapping({"compation": {}})
    with pytest.raises(InvalidInput, match="must be a mapping"):
        config_from_mapping(["compaction"])
    with pytest.raises(InvalidInput, match="compaction: must be a mapping"):
        config_from_mapping({"compaction": [1]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("compaction: [\n")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(NotFound, match="compaction config not found"):
        load_config(tmp_path / "missing.yaml")


def test_prefixes_are_matched_lower_cased() -> None:
    config = config_from_mapping({"compaction": {"error_prefixes": ["OOPS"]}})
    assert config.error_prefixes == ("oops",)
