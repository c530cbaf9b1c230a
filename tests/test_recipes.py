"""Recipe validation: each bad field is one clear error naming the field."""

from __future__ import annotations

import pytest

from persona import recipes
from persona.errors import Incompatible, InvalidInput, NotFound
from persona.yamlsafe import load_text
from tests.storefix import fake_base, fake_vector, toy_repo, write_recipe

GOOD = {"base": "toy", "method": "ties", "lambda": 1.0, "density": 0.2, "seed": 0,
        "vectors": [{"name": "listening", "alpha": 1.0}, {"name": "suggesting", "alpha": -0.5, "density": 0.3}]}


def test_good_recipe_parses():
    spec = recipes.parse(GOOD)
    assert spec.method == "ties" and spec.density == 0.2
    assert spec.vectors[1] == recipes.VectorSpec("suggesting", -0.5, 0.3)


@pytest.mark.parametrize("change, field", [
    ({"bogus": 1}, "bogus"),
    ({"method": "slerp"}, "method"),
    ({"density": 0}, "density"),
    ({"density": 1.5}, "density"),
    ({"density": "0.2"}, "density"),
    ({"lambda": float("nan")}, "lambda"),
    ({"lambda": float("inf")}, "lambda"),
    ({"lambda": 1e300}, "lambda"),
    ({"lambda": True}, "lambda"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"dtype": "int8"}, "dtype"),
    ({"elect": "vote"}, "elect"),
    ({"trim": "row"}, "trim"),
    ({"vectors": []}, "no vector"),
    ({"vectors": "listening"}, "no vector"),
    ({"vectors": [{"name": "a/b", "alpha": 1}]}, "name"),
    ({"vectors": [{"name": "x", "alpha": 1}, {"name": "x", "alpha": 2}]}, "twice"),
    ({"vectors": [{"name": "x", "alpha": 1, "beta": 2}]}, "beta"),
    ({"vectors": [{"name": "x", "alpha": "lots"}]}, "alpha"),
    ({"vectors": [{"name": "x", "alpha": float("nan")}]}, "alpha"),
    ({"vectors": [{"name": "x", "density": 0.0}]}, "density"),
    ({"vectors": ["x"]}, r"vectors\[0\]"),
    ({"base": ""}, "base"),
])
def test_bad_fields_are_named(change, field):
    with pytest.raises(InvalidInput, match=field):
        recipes.parse({**GOOD, **change})


def test_not_a_mapping():
    with pytest.raises(InvalidInput):
        recipes.parse(["base", "x"])


def test_billion_laughs_is_refused_before_expansion():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9))
    with pytest.raises(InvalidInput, match="aliases"):
        load_text(bomb, "bomb.yaml")


def test_yaml_syntax_error_names_line():
    with pytest.raises(InvalidInput, match="line"):
        load_text("base: x\nvectors: [\n", "bad.yaml")


def test_python_tags_are_not_executed():
    with pytest.raises(InvalidInput):
        load_text("!!python/object/apply:os.system ['echo hacked']", "evil.yaml")


def test_resolve_pins_ids_and_refuses_other_base(tmp_path):
    repo = toy_repo(tmp_path)
    recipe = recipes.resolve(repo, recipes.parse(GOOD))
    assert recipe.body["vectors"][0]["id"] == repo.vector_id("listening")
    assert recipe.body["vectors"][0]["density"] == 0.2  # the recipe default, made explicit
    other = fake_base(repo, "other", seed=9)
    fake_vector(repo, "alien", other, 7)
    with pytest.raises(Incompatible, match="alien"):
        recipes.resolve(repo, recipes.parse({**GOOD, "vectors": [{"name": "alien", "alpha": 1}]}))
    with pytest.raises(NotFound, match="nosuch"):
        recipes.resolve(repo, recipes.parse({**GOOD, "vectors": [{"name": "nosuch", "alpha": 1}]}))
    with pytest.raises(NotFound):
        recipes.resolve(repo, recipes.parse({**GOOD, "base": "nobase"}))


def test_load_file(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", [("listening", 1.0)])
    assert recipes.load(path).vectors[0].name == "listening"
    with pytest.raises(NotFound):
        recipes.load(tmp_path / "missing.yaml")


def test_diff():
    a = {"base": {"name": "toy", "id": "1"}, "method": "ties", "lambda": 1.0, "density": 0.2, "seed": 0,
         "vectors": [{"name": "l", "id": "x", "alpha": 1.0, "density": 0.2},
                     {"name": "s", "id": "y", "alpha": -0.5, "density": 0.2}]}
    b = {**a, "method": "dare_ties", "vectors": [{"name": "l", "id": "x", "alpha": 1.5, "density": 0.2},
                                                 {"name": "w", "id": "z", "alpha": 0.3, "density": 0.2}]}
    d = recipes.diff(a, b)
    assert d["params"] == {"method": {"from": "ties", "to": "dare_ties"}}
    assert [v["name"] for v in d["added"]] == ["w"]
    assert [v["name"] for v in d["removed"]] == ["s"]
    assert d["changed"] == [{"name": "l", "alpha": {"from": 1.0, "to": 1.5}}]
