"""Reports: tables, JSON, the Prometheus textfile (parsed back), history."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from persona.aer.evaluate import AerConfig, AerResult, evaluate_aer
from persona.aer.probes import parse_probes
from persona.aer.report import (
    HistoryPoint,
    format_history,
    format_result,
    format_tokens,
    history_point,
    plot_history,
    render_tables,
    to_json,
    tokens_to_json,
    write_prom,
)
from persona.aer.runner import FakeRunner
from persona.aer.sections import parse_prompt
from persona.aer.tokens import token_report
from persona.errors import InvalidInput

PROMPT = (
    "## Identity\nID_MARK Your name is Timmy.\n\n"
    "## Style\nSTYLE_MARK Say ahoy.\n\n"
    "## Task\nTASK_MARK Garden help.\n"
)
RULES = {"ID_MARK": "I am Timmy.", "STYLE_MARK": "Ahoy!", "TASK_MARK": "Gardening."}
PROBES = [
    {
        "id": "id-1",
        "section": "identity",
        "messages": ["name?"],
        "checks": {"must_match": ["timmy"]},
    },
    {"id": "st-1", "section": "style", "messages": ["hi?"], "checks": {"must_match": ["ahoy"]}},
]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def result(tok: Any) -> AerResult:
    doc = parse_prompt(PROMPT, "prompts/SOUL.md")
    return evaluate_aer(
        base=FakeRunner(RULES, model_id="smollm2"),
        recipe=FakeRunner(RULES, baked=["ID_MARK"], model_id="timmy-v2"),
        prompt=doc,
        probes=parse_probes(PROBES, "p.yaml", doc.names),
        tokenizer=tok,
        context_window=8192,
        config=AerConfig(min_probes=1),  # one probe per section: the report, not the verdict, is tested
    )


def test_prometheus_textfile_parses(result: AerResult, tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "aer.prom"
    write_prom(path, result, "timmy")
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    assert set(families) == {"persona_aer", "persona_section_tokens", "persona_section_droppable"}
    aer = {s.labels["stage"]: s.value for s in families["persona_aer"].samples}
    assert aer == {
        "before": pytest.approx(result.aer_before),
        "after": pytest.approx(result.aer_after),
    }
    assert all(s.labels["recipe"] == "timmy" for f in families.values() for s in f.samples)
    tokens = {s.labels["section"]: s.value for s in families["persona_section_tokens"].samples}
    assert tokens == {s.name: s.tokens for s in result.sections}
    drop = {s.labels["section"]: s.value for s in families["persona_section_droppable"].samples}
    assert drop == {"identity": 1.0, "style": 0.0, "task": 0.0}
    assert [p.name for p in path.parent.iterdir()] == ["aer.prom"]  # no temp files left


def test_prometheus_for_tokens_only(tok: Any, tmp_path: Path) -> None:
    rep = token_report(tok, parse_prompt(PROMPT), 8192)
    path = tmp_path / "aer.prom"
    write_prom(path, rep, 'we"ird\\label')
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    assert set(families) == {"persona_aer", "persona_section_tokens"}
    (sample,) = families["persona_aer"].samples
    assert sample.labels == {"recipe": 'we"ird\\label', "stage": "before"}
    assert sample.value == pytest.approx(rep.aer)


def test_json_is_serialisable_and_complete(result: AerResult) -> None:
    data = json.loads(json.dumps(to_json(result), allow_nan=False))
    assert data["schema"] == "persona.aer/1"
    assert data["base"] == "smollm2" and data["recipe"] == "timmy-v2"
    assert data["dropped"] == ["identity"]
    assert data["aer"]["before"] == pytest.approx(result.aer_before)
    assert data["aer"]["delta_pp"] == pytest.approx(100 * (result.aer_after - result.aer_before))
    assert [s["verdict"] for s in data["sections"]] == ["DROP", "KEEP", "KEEP"]
    assert {m["name"] for m in data["modes"]} >= {
        "full prompt (ceiling)",
        "recipe, no alignment prompt",
    }
    assert data["tokens"]["total"] == result.tokens.total
    assert data["config"]["tolerance"] == 0.05
    assert data["runs"]["full prompt (ceiling)"][0]["answer"]


def test_json_spells_infinite_kl(result: AerResult) -> None:
    from dataclasses import replace

    broken = replace(result, sections=[replace(result.sections[0], kl_recipe_without=math.inf)])
    data = json.loads(json.dumps(to_json(broken), allow_nan=False))
    assert data["sections"][0]["kl_recipe_without"] == "inf"


def test_text_tables(result: AerResult, tok: Any) -> None:
    for use_rich in (True, False):
        text = format_result(result, use_rich=use_rich)
        for needle in (
            "C_alignment",
            "C_total",
            "AER",
            "smollm2 + SOUL.md",
            "timmy-v2",
            "drops identity",
            "full prompt (ceiling)",
            "avg input tokens/probe",
            "DROP",
            "KEEP",
        ):
            assert needle in text, (use_rich, needle)
        assert f"{100 * result.aer_before:.2f}%" in text
    plain = render_tables([("T", ["a", "bb"], [["xxx", "y"]])], use_rich=False)
    assert plain.splitlines() == ["T", "a    bb", "---  --", "xxx  y"]
    tokens_text = format_tokens(token_report(tok, parse_prompt(PROMPT), 8192), use_rich=False)
    assert "(template overhead)" in tokens_text and "C_alignment" in tokens_text
    assert (
        tokens_to_json(token_report(tok, parse_prompt(PROMPT), 8192))["sections"][0]["alignment"]
        is True
    )


def test_history(tmp_path: Path, result: AerResult, tok: Any) -> None:
    stored = json.loads(json.dumps(to_json(result)))
    assert history_point("a1b2c3d", stored) == HistoryPoint(
        "a1b2c3d", result.aer_before, result.aer_after
    )
    tokens_only = tokens_to_json(token_report(tok, parse_prompt(PROMPT), 8192))
    assert history_point("x", tokens_only).aer_after is None
    with pytest.raises(InvalidInput, match="no AER value"):
        history_point("y", {})
    points = [HistoryPoint("a1b2c3d", 0.91, 0.95), HistoryPoint("e4f5a6b", 0.92, None)]
    text = format_history(points, use_rich=False)
    assert "a1b2c3d" in text and "91.00%" in text and "95.00%" in text
    with pytest.raises(InvalidInput, match="no AER results"):
        plot_history([], tmp_path / "aer.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidInput, match="matplotlib") as info:
            plot_history(points, tmp_path / "aer.png")
        assert "pip install matplotlib" in info.value.hint
        assert not (tmp_path / "aer.png").exists()
    else:
        plot_history(points, tmp_path / "aer.png")
        assert (tmp_path / "aer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
