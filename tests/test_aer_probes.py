"""Probe files: strict validation naming probe and field, regex checks with timeouts,
alias bombs refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from persona.aer.probes import (
    MAX_PROBE_FILE_BYTES,
    MAX_YAML_ALIASES,
    Checks,
    Probe,
    load_probes,
    parse_probes,
    run_checks,
    safe_load_yaml,
)
from persona.aer.sections import load_prompt
from persona.errors import InvalidInput, NotFound

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "aer"


def good(**over: Any) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "id": "p1",
        "section": "identity",
        "messages": ["What is your name?"],
        "checks": {"must_match": ["timmy"], "must_not_match": ["smollm"]},
    }
    probe.update(over)
    return probe


def test_valid_probe_and_shorthands() -> None:
    probes = parse_probes(
        [
            good(reference="I am Timmy."),
            good(
                id="p2",
                section="Identity",  # matched to the slug
                messages="Who are you?",
                checks={"must_match": "timmy"},
            ),
            good(
                id="p3",
                messages=[
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    "and your name?",
                ],
            ),
        ],
        "p.yaml",
        sections=["identity", "values"],
    )
    assert [p.id for p in probes] == ["p1", "p2", "p3"]
    assert probes[0].reference == "I am Timmy."
    assert probes[1].section == "identity"
    assert probes[1].messages == ({"role": "user", "content": "Who are you?"},)
    assert probes[1].checks == Checks(("timmy",), ())
    assert [m["role"] for m in probes[2].messages] == ["user", "assistant", "user"]
    assert probes[0].messages_hash != probes[2].messages_hash


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"x": 1}, r"expected a YAML list of probes"),
        ([], r"no probes"),
        (["text"], r"probe #1: expected a mapping"),
        ([{k: v for k, v in good().items() if k != "id"}], r"probe #1: field 'id': missing"),
        ([good(id=7)], r"probe #1: field 'id': expected a non-empty string"),
        ([good(), good()], r"probe 'p1': field 'id': duplicate id"),
        ([good(colour="red")], r"probe 'p1': field 'colour': unknown key"),
        (
            [{k: v for k, v in good().items() if k != "section"}],
            r"probe 'p1': field 'section': missing",
        ),
        ([good(section=["a"])], r"probe 'p1': field 'section': expected a section name"),
        ([good(section="nowhere")], r"probe 'p1': field 'section': unknown section 'nowhere'"),
        (
            [{k: v for k, v in good().items() if k != "messages"}],
            r"probe 'p1': field 'messages': missing",
        ),
        ([good(messages=[])], r"probe 'p1': field 'messages': expected a non-empty list"),
        (
            [good(messages=[3])],
            r"probe 'p1': field 'messages\[0\]': expected a string or a \{role, content\}",
        ),
        ([good(messages=["  "])], r"probe 'p1': field 'messages\[0\]': empty message"),
        (
            [good(messages=[{"role": "system", "content": "x"}])],
            r"probe 'p1': field 'messages\[0\].role'",
        ),
        (
            [good(messages=[{"role": "user", "content": 5}])],
            r"probe 'p1': field 'messages\[0\].content'",
        ),
        (
            [good(messages=[{"role": "user", "content": "a", "name": "b"}])],
            r"field 'messages\[0\]': unknown key\(s\) name",
        ),
        (
            [good(messages=["hi", {"role": "assistant", "content": "yo"}])],
            r"field 'messages': the last turn must be a user turn",
        ),
        (
            [{k: v for k, v in good().items() if k != "checks"}],
            r"probe 'p1': field 'checks': missing",
        ),
        ([good(checks=["timmy"])], r"probe 'p1': field 'checks': expected a mapping"),
        ([good(checks={"must": ["x"]})], r"probe 'p1': field 'checks.must': unknown key"),
        ([good(checks={})], r"probe 'p1': field 'checks': no regexes"),
        (
            [good(checks={"must_match": 3})],
            r"field 'checks.must_match': expected a string or a list",
        ),
        (
            [good(checks={"must_match": ["ok", 3]})],
            r"field 'checks.must_match\[1\]': expected a string",
        ),
        (
            [good(checks={"must_match": ["(unclosed"]})],
            r"field 'checks.must_match\[0\]': invalid regex",
        ),
        (
            [good(checks={"must_not_match": ["ok", "[z-a]"]})],
            r"field 'checks.must_not_match\[1\]': invalid regex",
        ),
        ([good(checks={"must_match": [""]})], r"field 'checks.must_match\[0\]': empty regex"),
        ([good(reference=5)], r"probe 'p1': field 'reference': expected a non-empty string"),
    ],
)
def test_validation_errors_name_probe_and_field(data: Any, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        parse_probes(data, "p.yaml", sections=["identity"])


def test_checks_are_case_insensitive() -> None:
    probe = Probe("p", "s", ({"role": "user", "content": "q"},), Checks(("timmy",), ("smollm",)))
    assert run_checks(probe, "I am TIMMY.").passed
    res = run_checks(probe, "I am SmolLM, not timmy")
    assert not res.passed and res.failures == ("must_not_match 'smollm' matched",)
    res = run_checks(probe, "I am nobody")
    assert not res.passed and res.failures == ("must_match 'timmy' did not match",)


def test_catastrophic_regex_times_out_and_fails_with_a_note() -> None:
    # The `regex` module handles (a+)+$ well; (a|a)*$ still backtracks exponentially.
    evil = "(a|a)*$"
    probe = Probe("p", "s", ({"role": "user", "content": "q"},), Checks((evil,), ()))
    res = run_checks(probe, "a" * 40 + "!", timeout=0.05)
    assert not res.passed
    assert "timed out" in res.failures[0] and "counted as failed" in res.failures[0]
    not_probe = Probe("p", "s", ({"role": "user", "content": "q"},), Checks((), (evil,)))
    res = run_checks(not_probe, "a" * 40 + "!", timeout=0.05)
    assert not res.passed and "timed out" in res.failures[0]


def test_alias_bomb_is_refused() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    bomb = "\n".join(lines) + "\n"
    assert bomb.count("*") < MAX_YAML_ALIASES  # few aliases, 9**9 nodes
    with pytest.raises(InvalidInput, match="expand to more than .* alias bomb"):
        safe_load_yaml(bomb, "bomb.yaml")


def test_too_many_aliases_or_recursion_refused() -> None:
    many = "a: &a x\nb: [" + ",".join(["*a"] * (MAX_YAML_ALIASES + 1)) + "]\n"
    with pytest.raises(InvalidInput, match="more than 100 YAML aliases"):
        safe_load_yaml(many, "many.yaml")
    with pytest.raises(InvalidInput, match="recursive YAML alias"):
        safe_load_yaml("&a [1, *a]\n", "rec.yaml")


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    text = """
- id: a
  section: identity
  messages: ["What is your name?"]
  checks: &name_checks
    must_match: ['timmy']
- id: b
  section: identity
  messages: ["Who are you?"]
  checks: *name_checks
"""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    probes = load_probes(path, ["identity"])
    assert probes[1].checks == probes[0].checks


def test_yaml_errors_and_limits(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"p.yaml:\d+: invalid YAML"):
        safe_load_yaml("- a\n- [b\n", "p.yaml")
    with pytest.raises(InvalidInput, match="larger than"):
        safe_load_yaml("#" * (MAX_PROBE_FILE_BYTES + 1), "p.yaml")
    with pytest.raises(InvalidInput):
        safe_load_yaml("!!python/object:os.system ['echo hi']\n", "p.yaml")
    with pytest.raises(NotFound):
        load_probes(tmp_path / "none.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("#" * (MAX_PROBE_FILE_BYTES + 1))
    with pytest.raises(InvalidInput, match="larger than"):
        load_probes(big)


def test_example_probes_cover_every_alignment_section_held_out_and_clean() -> None:
    """The demo's probes: at least 12 per alignment section, none a near-repeat of any built-in
    distillation prompt (trained on or held out), and no leak in the prompt without each section."""
    from persona.aer.lint import lint_probes
    from persona.aer.overlap import TrainingPrompts
    from persona.train.prompt_pool import builtin_prompts

    doc = load_prompt(EXAMPLES / "SOUL.md")
    probes = load_probes(EXAMPLES / "probes.yaml", doc.names)
    per: dict[str, int] = {}
    for p in probes:
        per[p.section] = per.get(p.section, 0) + 1
    assert set(per) == set(doc.alignment_names)
    assert all(n >= 12 for n in per.values())
    assert yaml.safe_load((EXAMPLES / "probes.yaml").read_text())  # plain YAML too
    everything = TrainingPrompts({"built-in set": [p.user_text for p in builtin_prompts()]})
    lint = lint_probes(doc, probes, everything)
    assert lint.to_json()["overlaps"] == [] and lint.to_json()["leaks"] == []
