"""merge + build on the tiny model: weights checked against an independent computation,
the directory loads in transformers and generates, caches and sharing hold."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from persona import recipes
from persona.errors import Incompatible
from persona.porcelain import models
from persona.porcelain.build import build, edit_head_recipe, merge_recipe
from persona.porcelain.engine import build_recipe
from persona.repo import Repository
from persona.store import objects as obj
from persona.store.tensors import load_tensor


@pytest.fixture
def repo(tmp_path, tiny_model_dir, tiny_lora_adapter, tiny_finetuned_dir):
    repo, _ = Repository.init(tmp_path / "store")
    models.import_base(repo, str(tiny_model_dir), name="tiny")
    models.import_adapter(repo, "listening", tiny_lora_adapter[0])
    models.import_checkpoint(repo, "suggesting", tiny_finetuned_dir)
    return repo


def _recipe(repo, tmp_path, method="ties", density=0.3, alphas=(1.0, -0.5), **extra):
    data = {"base": "tiny", "method": method, "lambda": 0.9, "density": density, "seed": 3,
            "vectors": [{"name": "listening", "alpha": alphas[0]}, {"name": "suggesting", "alpha": alphas[1]}],
            **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return recipes.resolve(repo, recipes.load(path))


def _reference_ties(base, deltas, alphas, densities, lam):
    """The TIES formula written out plainly (float64, argsort-based trim)."""
    scaled = []
    for delta, alpha, density in zip(deltas, alphas, densities, strict=True):
        s = (alpha * delta.double()).reshape(-1)
        k = math.ceil(density * s.numel())
        order = torch.argsort(s.abs(), descending=True, stable=True)
        kept = torch.zeros_like(s)
        kept[order[:k]] = s[order[:k]]
        scaled.append(kept)
    stacked = torch.stack(scaled)
    elected = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).double()
    agree = (torch.sign(stacked) == elected) & (stacked != 0)
    mean = (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)
    return base.double() + lam * mean.reshape(base.shape)


def test_ties_with_negation_matches_reference(repo, tmp_path):
    recipe = _recipe(repo, tmp_path)
    result = merge_recipe(repo, recipe, "ties with negation")
    build_obj = repo.get(result.build.id, obj.Build)
    merged = repo.get(build_obj.weights, obj.Tree)
    base_tree = repo.get(repo.get(build_obj.base, obj.Base).weights, obj.Tree)
    listening = repo.get(repo.vector_id("listening"), obj.Vector)
    suggesting = repo.get(repo.vector_id("suggesting"), obj.Vector)
    checked = 0
    for name, entry in base_tree.entries.items():
        deltas, alphas = [], []
        if name in listening.factors:
            f = listening.factors[name]
            deltas.append(f.scale * (load_tensor(repo.objects, f.B).double() @ load_tensor(repo.objects, f.A).double()))
            alphas.append(1.0)
        if name in suggesting.finetuned:  # a checkpoint vector: W_ft is stored, the delta is W_ft - W_base
            deltas.append(load_tensor(repo.objects, suggesting.finetuned[name]).double()
                          - load_tensor(repo.objects, entry.blob).double())
            alphas.append(-0.5)
        if not deltas:
            assert merged.entries[name].blob == entry.blob, "untouched tensors must share the base's blob"
            continue
        base = load_tensor(repo.objects, entry.blob)
        expected = _reference_ties(base, deltas, alphas, [0.3] * len(deltas), 0.9).to(base.dtype)
        ours = load_tensor(repo.objects, merged.entries[name].blob)
        assert torch.allclose(ours.double(), expected.double(), atol=1e-6, rtol=1e-5), name
        checked += 1
    assert checked >= 2


def test_task_arithmetic_matches_formula(repo, tmp_path):
    recipe = _recipe(repo, tmp_path, method="task_arithmetic", density=1.0, alphas=(0.7, -0.25))
    result = merge_recipe(repo, recipe, "ta")
    merged = repo.get(repo.get(result.build.id, obj.Build).weights, obj.Tree)
    base_tree = repo.get(repo.get(repo.base_id("tiny"), obj.Base).weights, obj.Tree)
    listening = repo.get(repo.vector_id("listening"), obj.Vector)
    suggesting = repo.get(repo.vector_id("suggesting"), obj.Vector)
    for name, f in listening.factors.items():
        delta = f.scale * (load_tensor(repo.objects, f.B).double() @ load_tensor(repo.objects, f.A).double())
        total = 0.7 * delta
        if name in suggesting.finetuned:
            total = total - 0.25 * (load_tensor(repo.objects, suggesting.finetuned[name]).double()
                                    - load_tensor(repo.objects, base_tree.entries[name].blob).double())
        expected = load_tensor(repo.objects, base_tree.entries[name].blob).double() + 0.9 * total
        assert torch.allclose(load_tensor(repo.objects, merged.entries[name].blob).double(), expected, atol=1e-6)


def test_second_build_is_cached(repo, tmp_path):
    recipe = _recipe(repo, tmp_path)
    first = merge_recipe(repo, recipe, "one")
    again = build_recipe(repo, first.build.recipe_id)
    assert again.cached and again.id == first.build.id


def test_dare_is_deterministic_across_runs(repo, tmp_path):
    recipe = _recipe(repo, tmp_path, method="dare_ties", density=0.5)
    recipe_id = repo.put(recipe)
    a = build_recipe(repo, recipe_id)
    # drop the cache row, merge again: same weights tree
    from persona.db.models import BuildRow

    repo.db.write(lambda s: s.query(BuildRow).delete())
    b = build_recipe(repo, recipe_id)
    assert not b.cached and a.weights == b.weights


def test_build_dir_loads_and_generates(repo, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merge_recipe(repo, _recipe(repo, tmp_path), "ties")
    out = build(repo, "HEAD", tmp_path / "out" / "model", shard_size="100KB")
    path = tmp_path / "out" / "model"
    assert out.path == str(path.absolute())
    names = sorted(p.name for p in path.iterdir())
    assert "config.json" in names and "README.md" in names and "model.safetensors.index.json" in names
    assert any(n.startswith("model-00001-of-") for n in names)
    card = (path / "README.md").read_text()
    assert "ties" in card and "suggesting" in card and "-0.5" in card
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    merged = repo.get(repo.get(out.build.id, obj.Build).weights, obj.Tree)
    state = model.state_dict()
    for name, entry in merged.entries.items():
        assert torch.equal(state[name], load_tensor(repo.objects, entry.blob)), name
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]
    # a second build of the same commit writes the same files from the cache
    again = build(repo, "HEAD", tmp_path / "out" / "again", shard_size="100KB")
    assert again.build.cached


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_build_of_an_unmerged_commit_merges_and_writes_in_one_pass(repo, tmp_path, dtype):
    """`persona build` of a commit never merged: the same files as merge-then-build, and the merge is cached."""
    from safetensors.torch import load_file

    from persona.porcelain.history import commit_recipe

    commit_recipe(repo, _recipe(repo, tmp_path), "committed, not merged")
    one_pass = build(repo, "HEAD", tmp_path / "one-pass", dtype=dtype, shard_size="100KB")
    assert not one_pass.build.cached and one_pass.build.merged_tensors > 0
    from_cache = build(repo, "HEAD", tmp_path / "from-cache", dtype=dtype, shard_size="100KB")
    assert from_cache.build.cached and from_cache.build.id == one_pass.build.id
    files = sorted(p.name for p in (tmp_path / "one-pass").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "from-cache").iterdir())
    for name in files:
        a, b = tmp_path / "one-pass" / name, tmp_path / "from-cache" / name
        if name.endswith(".safetensors"):
            ta, tb = load_file(a), load_file(b)
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
        else:
            assert a.read_bytes() == b.read_bytes(), name
    # and the stored build is exactly what a plain merge of the recipe makes
    merged = repo.get(repo.get(one_pass.build.id, obj.Build).weights, obj.Tree)
    expected = build_recipe(repo, repo.put(_recipe(repo, tmp_path, seed=4)), dtype=dtype)  # same weights, new id
    assert merged.entries == repo.get(expected.weights, obj.Tree).entries


def test_a_failed_one_pass_build_leaves_no_directory_and_no_build(repo, tmp_path, monkeypatch):
    from persona.db.models import BuildRow
    from persona.merge import kernel
    from persona.porcelain.history import commit_recipe

    commit_recipe(repo, _recipe(repo, tmp_path), "committed, not merged")
    real = kernel.merge_tensor
    calls = []

    def failing(name, *args, **kwargs):  # the disk fills up at the third merged tensor
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(kernel, "merge_tensor", failing)
    with pytest.raises(OSError):
        build(repo, "HEAD", tmp_path / "out" / "model", shard_size="100KB")
    assert len(calls) == 3
    assert list((tmp_path / "out").iterdir()) == []  # neither the model nor its temp directory
    assert repo.db.read(lambda s: s.query(BuildRow).count()) == 0


def test_build_dtype_and_refuse_existing_output(repo, tmp_path):
    from persona.errors import Conflict

    merge_recipe(repo, _recipe(repo, tmp_path), "ties")
    out = build(repo, "HEAD", tmp_path / "bf16", dtype="bfloat16")
    assert out.build.dtype == "BF16"
    import json

    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with pytest.raises(Conflict):
        build(repo, "HEAD", tmp_path / "bf16")
    assert build(repo, "HEAD", tmp_path / "bf16", dtype="bfloat16", force=True).build.cached


def test_vector_for_other_base_refused_before_work(repo, tmp_path, tiny_model_dir_b, tiny_lora_adapter):
    models.import_base(repo, str(tiny_model_dir_b), name="other")
    models.import_adapter(repo, "alien", tiny_lora_adapter[0], base="other")
    data = {"base": "tiny", "vectors": [{"name": "alien", "alpha": 1.0}]}
    with pytest.raises(Incompatible):
        recipes.resolve(repo, recipes.parse(data))
    # and the engine itself refuses a forged recipe that skips resolve()
    forged = obj.RecipeObject({"base": {"name": "tiny", "id": repo.base_id("tiny")}, "method": "ties",
                               "lambda": 1.0, "density": 0.5, "seed": 0, "dtype": None, "elect": "sum",
                               "trim": "tensor", "vectors": [{"name": "alien", "id": repo.vector_id("alien"),
                                                              "alpha": 1.0, "density": 0.5}]})
    before = set(repo.objects.iter_ids())
    with pytest.raises(Incompatible):
        build_recipe(repo, repo.put(forged))
    assert set(repo.objects.iter_ids()) - before == {repo.put(forged)}


def test_edit_head_recipe(repo, tmp_path):
    merge_recipe(repo, _recipe(repo, tmp_path), "start")
    edited = edit_head_recipe(repo, ["listening:1.5", "suggesting:-0.2:0.4"], [], None, None, None, None, None)
    vectors = {v["name"]: v for v in edited.body["vectors"]}
    assert vectors["listening"]["alpha"] == 1.5 and vectors["suggesting"]["density"] == 0.4
    dropped = edit_head_recipe(repo, [], ["suggesting"], None, "task_arithmetic", None, None, None)
    assert [v["name"] for v in dropped.body["vectors"]] == ["listening"]
    assert dropped.body["method"] == "task_arithmetic"


def test_global_trim(repo, tmp_path):
    recipe = _recipe(repo, tmp_path, trim="global")
    result = merge_recipe(repo, recipe, "global trim")
    assert not result.build.cached and result.build.merged_tensors >= 2


def test_build_gguf_reads_back(repo, tmp_path):
    import gguf

    merge_recipe(repo, _recipe(repo, tmp_path), "ties")
    out = build(repo, "HEAD", tmp_path / "timmy.gguf", fmt="gguf", outtype="f32")
    reader = gguf.GGUFReader(out.path)
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "blk.0.attn_q.weight" in names
    template = reader.fields["tokenizer.chat_template"]
    assert "im_start" in bytes(template.parts[template.data[0]]).decode()
    # a tensor no permutation touches comes back equal to the build's
    merged = repo.get(repo.get(out.build.id, obj.Build).weights, obj.Tree)
    gate = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate.weight")
    expected = load_tensor(repo.objects, merged.entries["model.layers.0.mlp.gate_proj.weight"].blob)
    assert torch.equal(torch.from_numpy(gate.data.copy()).reshape(expected.shape), expected)


def test_weight_diff(repo, tmp_path):
    from persona.porcelain.weightdiff import weight_diff

    a = merge_recipe(repo, _recipe(repo, tmp_path, method="task_arithmetic", density=1.0, alphas=(1.0, 0.0001)),
                     "a").commit.id
    b = merge_recipe(repo, _recipe(repo, tmp_path, method="task_arithmetic", density=1.0, alphas=(2.0, 0.0001)),
                     "b").commit.id
    report = weight_diff(repo, a, b)
    total = report.builds["total"]
    # B's merged delta is (almost exactly) twice A's: |B - A| == |A| and cosine 1
    assert total["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert total["l2_change"] == pytest.approx(total["norm_a"], rel=1e-3)
    assert total["norm_b"] == pytest.approx(2 * total["norm_a"], rel=1e-3)
    assert {row["layer"] for row in report.builds["layers"]} <= {0, 1, None}
    assert report.vectors and report.vectors[0]["a"] == "listening"
    assert "conflict" in report.render()
