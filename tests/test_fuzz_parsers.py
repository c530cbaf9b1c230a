"""Fuzzing the parsers of untrusted files: recipes, probes, YAML, names and revisions.

Property: whatever the input, the parser either succeeds with a value that
satisfies its documented constraints, or raises the typed error the CLI turns
into a one-line message (InvalidInput and its kind); never any other
exception. Bounded for CI with ``max_examples`` and no deadline
(``PERSONA_FUZZ_EXAMPLES`` scales it).
"""

from __future__ import annotations

import contextlib
import math
import os
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona import recipes, yamlsafe
from persona.aer import probes
from persona.errors import InvalidInput, NotFound
from persona.store.refs import validate_name

EXAMPLES = int(os.environ.get("PERSONA_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.one_of(
    st.sampled_from(["listening", "tuned", "a", "HEAD", "x.lock", "..", "a/b", "deadbeef", "a~1", "a@{1}",
                     "-x", "", "v1.0", "a..b", "tab\there", "nl\n", "\\x"]),
    st.text(max_size=12),
)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
scalars = st.one_of(st.none(), numbers, st.text(max_size=10), names)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def _keys(known: set[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(sorted(known)), st.text(max_size=8))


DELETE = object()


def _mutate(item: dict, edits: list) -> dict:
    out = dict(item)
    for key, value in edits:
        if value is DELETE:
            out.pop(key, None)
        else:
            out[key] = value
    return out


_edits = st.lists(st.tuples(st.text(max_size=8), st.one_of(scalars, values, st.just(DELETE))), max_size=2)
valid_vector = st.fixed_dictionaries(
    {"name": st.sampled_from(["listening", "tuned", "warmth", "a1", "v.2"])},
    optional={"alpha": st.floats(-100, 100), "density": st.floats(0.01, 1)})
valid_recipe = st.fixed_dictionaries(
    {"base": st.sampled_from(["tiny", "smollm2"]),
     "vectors": st.lists(valid_vector, min_size=1, max_size=4, unique_by=lambda v: v["name"])},
    optional={"method": st.sampled_from(recipes.METHODS), "lambda": st.floats(-100, 100),
              "density": st.floats(0.01, 1), "seed": st.integers(0, 2**63 - 1),
              "dtype": st.sampled_from(recipes.DTYPES), "elect": st.sampled_from(["sum", "count"]),
              "trim": st.sampled_from(["tensor", "global"])})
vector_entries = st.one_of(
    valid_vector,
    st.tuples(valid_vector, st.lists(st.tuples(_keys(recipes.VECTOR_KEYS),
                                               st.one_of(names, numbers, values, st.just(DELETE))),
                                     max_size=2)).map(lambda t: _mutate(*t)),
    st.dictionaries(_keys(recipes.VECTOR_KEYS), st.one_of(names, numbers, values), max_size=4), values)
recipe_like = st.one_of(
    valid_recipe,
    # a valid recipe with one or two fields replaced, added or removed
    st.tuples(valid_recipe, st.lists(st.tuples(_keys(recipes.TOP_KEYS), st.one_of(
        scalars, st.lists(vector_entries, max_size=5), values, st.just(DELETE))), max_size=2)).map(
        lambda t: _mutate(*t)),
    st.builds(lambda base, vectors, extra: {"base": base, "vectors": vectors, **extra},
              names, st.lists(vector_entries, max_size=5),
              st.dictionaries(_keys(recipes.TOP_KEYS), scalars, max_size=6)),
    values,
)


def _check_spec(spec: recipes.RecipeSpec) -> None:
    assert spec.method in recipes.METHODS and spec.vectors
    assert math.isfinite(spec.lambda_) and abs(spec.lambda_) <= recipes.MAX_WEIGHT
    assert 0 < spec.density <= 1 and 0 <= spec.seed < 2**63
    assert len({v.name for v in spec.vectors}) == len(spec.vectors)
    for v in spec.vectors:
        validate_name(v.name)
        assert math.isfinite(v.alpha) and abs(v.alpha) <= recipes.MAX_WEIGHT
        assert v.density is None or 0 < v.density <= 1


@FUZZ
@given(recipe_like)
def test_recipe_parse_only_succeeds_or_says_invalid(data):
    try:
        spec = recipes.parse(data, "fuzz")
    except InvalidInput:
        return
    _check_spec(spec)


@FUZZ
@given(recipe_like)
def test_recipe_yaml_round_trip(data):
    """The same structures written as YAML and read back through the hardened loader."""
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except (yaml.YAMLError, ValueError, OverflowError):
        return
    try:
        spec = recipes.parse(yamlsafe.load_text(text, "fuzz.yaml"), "fuzz.yaml")
    except InvalidInput:
        return
    _check_spec(spec)


yaml_fragments = st.sampled_from([
    "base: tiny\n", "vectors:\n", "  - name: listening\n", "    alpha: ", "1e999", ".nan", "-.inf", "&a ", "*a",
    "!!python/object/apply:os.system ['true']", "[", "]", "{", "}", ": ", "- ", "? ", "|\n", ">\n", "'", '"',
    "\t", "%YAML 1.1\n", "---\n", "...\n", "<<: *a\n", "!!binary aGk=\n", "0x1F", "0o17", "1_000", "~", "null",
    "yes", "\\u0000", "\x00", "\ufeff", "#c\n",
])
yaml_texts = st.one_of(st.text(max_size=200), st.lists(yaml_fragments, max_size=25).map("".join))


@FUZZ
@given(yaml_texts)
def test_yaml_loader_only_returns_data_or_says_invalid(text):
    try:
        data = yamlsafe.load_text(text, "fuzz.yaml")
    except InvalidInput:
        return
    with contextlib.suppress(InvalidInput):
        _check_spec(recipes.parse(data, "fuzz.yaml"))


regexes = st.one_of(st.sampled_from(["timmy", "(a|a)*$", "(", "[", "a{2,1}", "(?P<x>a)(?P=y)", "\\", "*",
                                     "(?i)ok", "x{99999999}", "", "(?<=a+)b", "\\p{L}+", "[[:alpha:]]"]),
                    st.text(alphabet="ab()[]{}*+?|\\^$.,:-=<>!P0123456789", max_size=12))
good_regexes = st.sampled_from(["timmy", "(?i)ok", "\\p{L}+", "(a|a)*$", "[[:alpha:]]", "hello|hi", "^\\w+$"])
valid_probe = st.fixed_dictionaries(
    {"id": st.text(alphabet="abcxyz-_019", min_size=1, max_size=6),
     "section": st.sampled_from(["identity", "values", "tools"]),
     "messages": st.one_of(st.sampled_from(["Who are you?", "hi"]),
                           st.lists(st.sampled_from(["Who are you?", "hi", {"role": "user", "content": "go"}]),
                                    min_size=1, max_size=3)),
     "checks": st.fixed_dictionaries({"must_match": st.lists(good_regexes, min_size=1, max_size=2)},
                                     optional={"must_not_match": st.lists(good_regexes, max_size=2)})},
    optional={"reference": st.text(max_size=10)})
any_probe = st.one_of(
    valid_probe,
    st.tuples(valid_probe, st.lists(st.tuples(st.sampled_from(["id", "section", "messages", "checks", "reference",
                                                               "extra"]),
                                              st.one_of(scalars, values, regexes, st.just(DELETE))),
                                    max_size=2)).map(lambda t: _mutate(*t)),
    st.fixed_dictionaries({
        "id": st.one_of(names, numbers),
        "section": st.one_of(names, st.none()),
        "messages": st.one_of(st.text(max_size=10), st.lists(st.one_of(
            st.text(max_size=10),
            st.dictionaries(st.sampled_from(["role", "content", "x"]),
                            st.one_of(st.sampled_from(["user", "assistant", "system"]), st.text(max_size=5),
                                      numbers), max_size=3)), max_size=3), values),
        "checks": st.one_of(
            st.dictionaries(st.sampled_from(["must_match", "must_not_match", "x"]),
                            st.one_of(regexes, st.lists(st.one_of(regexes, numbers), max_size=3)), max_size=3),
            values),
    }, optional={"reference": st.one_of(st.text(max_size=10), numbers), "extra": scalars}),
    values,
)
probe_like = st.one_of(st.lists(valid_probe, min_size=1, max_size=3, unique_by=lambda p: p["id"]),
                       st.lists(any_probe, max_size=4), values)


@FUZZ
@given(probe_like, st.one_of(st.none(), st.lists(st.sampled_from(["identity", "values", "tools"]), max_size=3)))
def test_probe_parse_only_succeeds_or_says_invalid(data, sections):
    try:
        parsed = probes.parse_probes(data, "fuzz.yaml", sections)
    except InvalidInput:
        return
    assert parsed and len({p.id for p in parsed}) == len(parsed)
    for probe in parsed:
        assert probe.checks.must_match or probe.checks.must_not_match
        assert probe.messages[-1]["role"] == "user"
        if sections is not None:
            assert probe.section in sections
        # every kept regex compiles, and checking an answer against it is bounded by the timeout
        result = probes.run_checks(probe, "a" * 30 + "!", timeout=0.05)
        assert isinstance(result.passed, bool)


# Characters YAML's reader refuses outright: see the control-character test below.
_PRINTABLE = re.compile("[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]*")


@FUZZ
@given(yaml_texts.filter(lambda t: _PRINTABLE.fullmatch(t) is not None))
def test_probe_yaml_loader_only_returns_data_or_says_invalid(text):
    try:
        data = probes.safe_load_yaml(text, "fuzz.yaml")
    except InvalidInput:
        return
    with contextlib.suppress(InvalidInput):
        probes.parse_probes(data, "fuzz.yaml")


def test_probe_yaml_loader_refuses_control_characters():
    with pytest.raises(InvalidInput):
        probes.safe_load_yaml("- id: \x1f\n", "fuzz.yaml")


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@FUZZ
@given(names)
def test_accepted_names_cannot_escape_or_read_as_revisions(name):
    try:
        validate_name(name)
    except InvalidInput:
        return
    assert SAFE_NAME.match(name) and ".." not in name and not name.endswith(".lock")
    assert not any(ch in name for ch in "/\\~^@:{} \n\t")


@settings(max_examples=max(50, EXAMPLES // 3), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=30), st.sampled_from(["HEAD", "HEAD~1", "main@{0}", "main^^", "v1", "HEAD~0",
                                                        "../../persona.json", "refs/heads/main", "HEAD@{99}",
                                                        "abcd", "main~99999999999999999999"])))
def test_revision_parsing_only_resolves_or_says_why(tmp_path, rev):
    from persona.store.revparse import resolve
    from tests.storefix import write_recipe

    repo = _revision_repo(tmp_path, write_recipe)
    try:
        oid = resolve(repo, rev)
    except (InvalidInput, NotFound):  # a name outside refs/ never even gets read
        return
    assert repo.objects.kind_of(oid) == "commit"


_REPOS: dict[str, object] = {}


def _revision_repo(tmp_path, write_recipe):
    """One small store with two commits and a tag, shared by every example."""
    if "repo" not in _REPOS:
        from persona.porcelain import history
        from tests.storefix import toy_repo

        root = tmp_path / "revs"
        root.mkdir(exist_ok=True)
        repo = toy_repo(root)
        for i, vectors in enumerate(([("listening", 1.0)], [("listening", 1.0), ("suggesting", -0.5)])):
            path = write_recipe(root / f"r{i}.yaml", vectors)
            history.commit_recipe(repo, recipes.resolve(repo, recipes.load(path)), f"c{i}")
        history.create_tag(repo, "v1")
        _REPOS["repo"] = repo
    return _REPOS["repo"]
