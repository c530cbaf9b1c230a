"""Bad and adversarial input through the real CLI: a one-line error, a non-zero exit, the store unchanged.

The library-level refusals are tested where they live (test_recipes, test_refs,
test_tensorio_*, test_compact_*, test_aer_probes, test_cli); this module drives
each kind through the ``persona`` command a user would type, against a store
with history, and checks what the user sees and what the store keeps:

- exit code non-zero (the error class's own), ``error: ...`` on one line plus
  at most a ``hint: ...`` line, no traceback;
- the store byte-for-byte unchanged (refs, reflogs, objects, cache) and the
  same index rows. Imports that stream a model and meet the bad tensor part
  way may leave complete, unreferenced blobs behind (gc removes them): for
  those nothing else may change and nothing new may be reachable;
- code in the input (pickle payloads, a YAML python tag, a model's remote
  code) never runs: the marker file it would write never appears.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import faultkit as fk


@dataclass
class Bad:
    argv: Callable[[dict[str, Path]], list[str]]
    message: str  # must appear in the error line
    streams: bool = False  # a streaming import: unreferenced blobs may stay behind
    code: int | None = None  # expected exit code (None: any typed non-zero)


RECIPES = {
    "vector-unknown-key": ("base: tiny\nvectors: [{name: listening, weight: 2}]\n", "unknown key 'weight'"),
    "lambda-wrong-type": ("base: tiny\nlambda: big\nvectors: [{name: listening}]\n", "lambda must be a number"),
    "alpha-wrong-type": ("base: tiny\nvectors: [{name: listening, alpha: [1]}]\n", "alpha must be a number"),
    "vectors-not-a-list": ("base: tiny\nvectors: listening\n", "selects no vector"),
    "vector-not-a-mapping": ("base: tiny\nvectors: [listening]\n", "must be a mapping"),
    "name-wrong-type": ("base: tiny\nvectors: [{name: 12}]\n", "name is missing"),
    "huge-lambda": ("base: tiny\nlambda: 1.0e+308\nvectors: [{name: listening}]\n", "out of range"),
    "huge-alpha": ("base: tiny\nvectors: [{name: listening, alpha: 1000000}]\n", "out of range"),
    "huge-integer": ("base: tiny\nlambda: " + "9" * 400 + "\nvectors: [{name: listening}]\n", "out of range"),
    "inf-alpha": ("base: tiny\nvectors: [{name: listening, alpha: .inf}]\n", "not finite"),
    "nan-density": ("base: tiny\nvectors: [{name: listening, density: .nan}]\n", "not finite"),
    "zero-density": ("base: tiny\ndensity: 0\nvectors: [{name: listening}]\n", "outside (0, 1]"),
    "negative-seed": ("base: tiny\nseed: -1\nvectors: [{name: listening}]\n", "seed must be"),
    "huge-seed": ("base: tiny\nseed: " + str(2**70) + "\nvectors: [{name: listening}]\n", "seed must be"),
    "bool-seed": ("base: tiny\nseed: true\nvectors: [{name: listening}]\n", "seed must be"),
    "duplicate-vectors": ("base: tiny\nvectors: [{name: listening, alpha: 1}, {name: listening, alpha: -1}]\n",
                          "listed twice"),
    "billion-laughs": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                       "base: tiny\nvectors: *d\n", "aliases"),
    "python-tag": ("base: !!python/object/apply:os.system ['touch {marker}']\nvectors: [{name: listening}]\n",
                   "not valid YAML"),
    "top-level-list": ("- base: tiny\n", "must be a mapping"),
    "syntax-error": ("base: tiny\nvectors: [{name: listening\n", "not valid YAML"),
    "missing-base": ("vectors: [{name: listening}]\n", "base is missing"),
    "base-not-a-string": ("base: {name: tiny}\nvectors: [{name: listening}]\n", "base is missing"),
    "vector-path-name": ("base: tiny\nvectors: [{name: ../listening}]\n", "path separator"),
    "vector-control-name": ('base: tiny\nvectors: [{name: "list\\x07ening"}]\n', "control characters"),
    "unknown-dtype": ("base: tiny\ndtype: float8\nvectors: [{name: listening}]\n", "unknown dtype"),
    "unknown-elect": ("base: tiny\nelect: majority\nvectors: [{name: listening}]\n", "elect must be"),
    "empty-file": ("", "must be a mapping"),
    "deep-nesting": ("base: tiny\nvectors: " + "[" * 200000 + "]" * 200000 + "\n", "nested too deeply"),
    "deep-block-nesting": ("base: tiny\nvectors:\n" + "".join("  " * i + "- \n" for i in range(1, 400)),
                           "nested too deeply"),
    "too-many-vectors": ("base: tiny\nvectors:\n" + "".join(f"  - {{name: v{i}}}\n" for i in range(300)),
                         "too many"),
}

CASES: dict[str, Bad] = {}
for _name, (_text, _message) in RECIPES.items():
    CASES[f"commit-recipe-{_name}"] = Bad(
        lambda f, n=_name: ["commit", "-f", str(f[f"recipe:{n}"]), "-m", "bad"], _message)
for _name in ("duplicate-vectors", "billion-laughs", "inf-alpha", "python-tag", "deep-nesting"):
    CASES[f"merge-recipe-{_name}"] = Bad(
        lambda f, n=_name: ["merge", "-f", str(f[f"recipe:{n}"]), "-m", "bad"], RECIPES[_name][1])

CASES.update({
    "commit-recipe-not-utf8": Bad(lambda f: ["commit", "-f", str(f["latin1.yaml"]), "-m", "bad"], "not UTF-8"),
    "commit-recipe-directory": Bad(lambda f: ["commit", "-f", str(f["dir"]), "-m", "bad"], "is a directory"),
    "commit-recipe-too-large": Bad(lambda f: ["commit", "-f", str(f["huge.yaml"]), "-m", "bad"], "larger than"),
    "merge-edit-nan-alpha": Bad(lambda f: ["merge", "listening:nan", "-m", "bad"], "not finite"),
    "merge-edit-overflow-alpha": Bad(lambda f: ["merge", "listening:1e400", "-m", "bad"], "not finite"),
    "merge-edit-no-alpha": Bad(lambda f: ["merge", "listening", "-m", "bad"], "cannot read"),
    "merge-edit-path-name": Bad(lambda f: ["merge", "../x:1.0", "-m", "bad"], "path separator"),
    # names: path separators, '..', control characters, revision syntax, id look-alikes
    "vector-name-dotdot": Bad(lambda f: ["vector", "import", "../evil", "--adapter", str(f["adapter"])],
                              "path separator"),
    "vector-name-slash": Bad(lambda f: ["vector", "import", "a/b", "--adapter", str(f["adapter"])],
                             "path separator"),
    "vector-name-control": Bad(lambda f: ["vector", "import", "x\x1by", "--adapter", str(f["adapter"])],
                               "control characters"),
    "vector-name-newline": Bad(lambda f: ["vector", "import", "x\ny", "--adapter", str(f["adapter"])],
                               "control characters"),
    "vector-name-reserved": Bad(lambda f: ["vector", "import", "HEAD", "--adapter", str(f["adapter"])],
                                "reserved"),
    "vector-name-lock": Bad(lambda f: ["vector", "import", "x.lock", "--adapter", str(f["adapter"])],
                            "reserved"),
    "vector-name-hex": Bad(lambda f: ["vector", "import", "deadbeef", "--adapter", str(f["adapter"])],
                           "looks like an object id"),
    "vector-name-tilde": Bad(lambda f: ["vector", "import", "a~1", "--adapter", str(f["adapter"])],
                             "invalid vector name"),
    "vector-name-reflog": Bad(lambda f: ["vector", "import", "a@{1}", "--adapter", str(f["adapter"])],
                              "invalid vector name"),
    "base-name-dotdot": Bad(lambda f: ["base", "import", str(f["model"]), "--name", ".."], "path separator"),
    "tag-name-caret": Bad(lambda f: ["tag", "v1^"], "invalid tag name"),
    "branch-name-dotfile": Bad(lambda f: ["branch", ".hidden"], "invalid branch name"),
    "branch-name-lock": Bad(lambda f: ["branch", "main.lock"], "reserved"),
    "show-path-traversal": Bad(lambda f: ["show", "../../persona.json"], "cannot parse revision"),
    "log-backslash": Bad(lambda f: ["log", "..\\..\\HEAD"], "cannot parse revision"),
    "rollback-reflog-past-end": Bad(lambda f: ["rollback", "HEAD@{99999}"], "has only"),
    "log-past-first-commit": Bad(lambda f: ["log", "HEAD~99999999999999999999"], "past the first commit"),
    "vector-show-path": Bad(lambda f: ["vector", "show", "../listening"], "no vector named"),
    "rollback-bad-date": Bad(lambda f: ["rollback", "--to", "yesterday-ish"], "cannot read date"),
    # weights and adapters that lie, overflow or carry code
    "base-nan-weights": Bad(lambda f: ["base", "import", str(f["nan_model"]), "--name", "nan"], "NaN",
                            streams=True),
    "checkpoint-inf-weights": Bad(lambda f: ["vector", "import", "inf", "--checkpoint", str(f["inf_model"])],
                                  "Inf", streams=True),
    "adapter-nan-factors": Bad(lambda f: ["vector", "import", "nan", "--adapter", str(f["nan_adapter"])], "NaN"),
    "safetensors-offsets-lie": Bad(lambda f: ["base", "import", str(f["lying_offsets"]), "--name", "liar"],
                                   "outside the data section"),
    "safetensors-size-lies": Bad(lambda f: ["base", "import", str(f["lying_size"]), "--name", "liar"], "needs"),
    "safetensors-header-length-lies": Bad(lambda f: ["base", "import", str(f["lying_length"]), "--name", "liar"],
                                          "safetensors"),
    "gguf-truncated": Bad(lambda f: ["base", "import", str(f["truncated.gguf"]), "--name", "cut"], "gguf"),
    "pickle-refused": Bad(lambda f: ["base", "import", str(f["pickle_model"]), "--name", "pkl"],
                          "pickle checkpoints can execute code"),
    "pickle-with-code-refused-even-allowed": Bad(
        lambda f: ["base", "import", str(f["evil_pickle"]), "--name", "evil", "--allow-pickle"],
        "refusing to unpickle"),
    "adapter-is-a-model": Bad(lambda f: ["vector", "import", "x", "--adapter", str(f["model"])], "adapter"),
    "not-a-model": Bad(lambda f: ["base", "import", str(f["latin1.yaml"]), "--name", "txt"],
                       "neither a model directory nor a .gguf file"),
    # data files
    "train-jsonl-bad-line": Bad(lambda f: ["train", "x", "--data", str(f["bad.jsonl"]), "--steps", "1",
                                           "--device", "cpu"], ":2:"),
    "train-jsonl-no-assistant": Bad(lambda f: ["train", "x", "--data", str(f["noassistant.jsonl"]), "--steps",
                                               "1", "--device", "cpu"], "no assistant message"),
    "compact-tool-call-cycle": Bad(lambda f: ["compact", str(f["cycle.json"]), "-o", str(f["dir"] / "out.json")],
                                   "cycle"),
    "compact-not-json": Bad(lambda f: ["compact", str(f["bad.jsonl"]), "-o", str(f["dir"] / "out.json")],
                            "JSON"),
    "compact-not-utf8": Bad(lambda f: ["compact", str(f["latin1.yaml"]), "-o", str(f["dir"] / "out.json")],
                            "UTF-8"),
    "aer-probe-invalid-regex": Bad(lambda f: ["aer", "--prompt", str(f["soul"]), "--probes", str(f["badregex.yaml"])],
                                   "invalid regex"),
    "aer-probe-alias-bomb": Bad(lambda f: ["aer", "--prompt", str(f["soul"]), "--probes", str(f["bomb.yaml"])],
                                "alias"),
})


def _copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _edit_safetensors(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _lying_file(folder: Path, header: dict, data: bytes, header_len: int | None = None) -> Path:
    body = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", header_len or len(body)) + body + data)
    return folder


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir, tiny_lora_adapter, tiny_finetuned_dir):
    import torch
    from safetensors.torch import load_file, save_file

    from persona.tensorio.gguf_writer import write_gguf
    from persona.tensorio.hf_dir import open_model_dir

    z = fk.zygote(tmp_path_factory.mktemp("zygote"))
    tpl = fk.template(z, tmp_path_factory.mktemp("template"), {
        "model": tiny_model_dir, "adapter": tiny_lora_adapter[0], "finetuned": tiny_finetuned_dir})
    root = tmp_path_factory.mktemp("bad")
    marker = root / "code-ran"
    files: dict[str, Path] = {"model": tiny_model_dir, "adapter": tiny_lora_adapter[0], "dir": root / "a-dir",
                              "soul": fk.REPO_ROOT / "examples/aer/SOUL.md"}
    files["dir"].mkdir()
    for name, (text, _message) in RECIPES.items():
        files[f"recipe:{name}"] = root / f"{name}.yaml"
        files[f"recipe:{name}"].write_text(text.replace("{marker}", str(marker)))
    files["latin1.yaml"] = root / "latin1.yaml"
    files["latin1.yaml"].write_bytes("base: caf\xe9\n".encode("latin-1"))
    files["huge.yaml"] = root / "huge.yaml"
    files["huge.yaml"].write_text("# " + "x" * (5 << 20) + "\n")

    nan_model = _copy_model(tiny_model_dir, root / "nan_model")
    _edit_safetensors(nan_model, lambda t: t["model.layers.1.mlp.up_proj.weight"].__setitem__((3, 7), float("nan")))
    inf_model = _copy_model(tiny_model_dir, root / "inf_model")
    _edit_safetensors(inf_model, lambda t: t["model.layers.0.self_attn.q_proj.weight"].__setitem__((0, 1),
                                                                                                   float("inf")))
    files.update(nan_model=nan_model, inf_model=inf_model)

    nan_adapter = _copy_model(tiny_lora_adapter[0], root / "nan_adapter")
    weights = nan_adapter / "adapter_model.safetensors"
    factors = load_file(str(weights))
    key = next(k for k in sorted(factors) if "lora_B" in k)
    factors[key][0, 0] = float("nan")
    save_file(factors, str(weights), metadata={"format": "pt"})
    files["nan_adapter"] = nan_adapter

    entry = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    for name, header, data, length in (
        ("lying_offsets", {"model.norm.weight": {**entry, "data_offsets": [0, 4096]}}, b"\0" * 16, None),
        ("lying_size", {"model.norm.weight": {**entry, "shape": [64]}}, b"\0" * 16, None),
        ("lying_length", {"model.norm.weight": entry}, b"\0" * 16, 1 << 40),
    ):
        folder = root / name
        folder.mkdir()
        shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
        files[name] = _lying_file(folder, header, data, length)

    gguf = write_gguf(root / "tiny.gguf", open_model_dir(tiny_model_dir), "f32")
    data = Path(gguf).read_bytes()
    files["truncated.gguf"] = root / "truncated.gguf"
    files["truncated.gguf"].write_bytes(data[: len(data) // 2])

    state = load_file(str(tiny_model_dir / "model.safetensors"))
    pickled = _copy_model(tiny_model_dir, root / "pickle_model")
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    evil = _copy_model(pickled, root / "evil_pickle")
    torch.save({**state, "x": _Touch(marker)}, evil / "pytorch_model.bin")
    files.update(pickle_model=pickled, evil_pickle=evil)

    remote = _copy_model(tiny_model_dir, root / "remote_code")
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    for module in ("configuration_evil.py", "modeling_evil.py"):
        (remote / module).write_text(code)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    files["remote_code"] = remote

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    files["bad.jsonl"] = root / "bad.jsonl"
    files["bad.jsonl"].write_text(json.dumps(good) + "\n{not json\n" + json.dumps(good) + "\n")
    files["noassistant.jsonl"] = root / "noassistant.jsonl"
    files["noassistant.jsonl"].write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")

    def call(cid: str) -> dict:
        return {"id": cid, "type": "function", "function": {"name": "ls", "arguments": "{}"}}

    files["cycle.json"] = root / "cycle.json"
    files["cycle.json"].write_text(json.dumps([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [call("a")]},
        {"role": "tool", "tool_call_id": "b", "content": "x"},
        {"role": "tool", "tool_call_id": "a", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [call("b")]},
        {"role": "tool", "tool_call_id": "b", "content": "x"},
    ]))
    files["badregex.yaml"] = root / "badregex.yaml"
    files["badregex.yaml"].write_text("- id: p1\n  section: identity\n  messages: ['Who are you?']\n"
                                      "  checks: {must_match: ['(unclosed']}\n")
    levels = ["- &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"- &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 13)]
    files["bomb.yaml"] = root / "bomb.yaml"
    files["bomb.yaml"].write_text("\n".join(levels) + "\n")
    return z, tpl, files, marker


def _bytes(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and not p.name.startswith("persona.db")}


def _rows(store: Path) -> dict[str, list[str]]:
    with sqlite3.connect(store / "persona.db") as db:
        return {table: sorted(r[0] for r in db.execute(f"SELECT id FROM {table}"))
                for table in ("commits", "vectors", "bases", "builds")}


@pytest.fixture(scope="module")
def shared_store(env, tmp_path_factory):
    """Cases that must leave the store byte-for-byte alone share one store (each checks before and after)."""
    return fk.copy_store(env[1].store, tmp_path_factory.mktemp("shared") / "store")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_cleanly(env, shared_store, tmp_path, name):
    z, tpl, files, marker = env
    case = CASES[name]
    store = fk.copy_store(tpl.store, tmp_path / "store") if case.streams else shared_store
    before_bytes, before_rows = _bytes(store), _rows(store)
    before = fk.snapshot(store) if case.streams else None
    result = z.run(case.argv(files), store, cwd=tmp_path)
    fk.assert_clean_error(result, name)
    if case.code is not None:
        assert result.code == case.code, (name, result.code, result.err)
    first = result.err.strip().splitlines()[0]
    assert case.message.lower() in first.lower(), f"{name}: {first!r}"
    assert not marker.exists(), f"{name}: code in the input ran"
    assert _rows(store) == before_rows, f"{name}: the index changed"
    if before is not None:
        after = fk.snapshot(store)
        assert after.refs == before.refs and after.reflogs == before.reflogs
        assert before.objects <= after.objects and after.reachable == before.reachable
        assert not fk.leftovers(store)
    else:
        assert _bytes(store) == before_bytes, f"{name}: the store changed"
    assert not (files["dir"] / "out.json").exists()


def test_remote_code_in_a_model_dir_is_never_executed(env, tmp_path):
    """A model asking for remote code imports as weights only; its Python never runs."""
    z, tpl, files, marker = env
    store = fk.copy_store(tpl.store, tmp_path / "store")
    result = fk.ok(z.run(["base", "import", str(files["remote_code"]), "--name", "remote"], store, cwd=tmp_path))
    assert not marker.exists()
    assert "remote" in result.out
    repo = fk._open(store)
    try:
        from persona.store import objects as obj

        base = repo.get(repo.base_id("remote"), obj.Base)
        assert not any(name.endswith(".py") for name in base.files)
    finally:
        repo.close()


def test_pickle_allowed_loads_with_weights_only(env, tmp_path):
    """--allow-pickle reads a plain state dict (torch.load with weights_only) and nothing else."""
    z, tpl, files, marker = env
    store = fk.copy_store(tpl.store, tmp_path / "store")
    fk.ok(z.run(["base", "import", str(files["pickle_model"]), "--name", "pkl", "--allow-pickle", "--json"],
                store, cwd=tmp_path))
    repo = fk._open(store)
    try:
        from persona.store import objects as obj

        # the same tensors as the safetensors original: the very same blobs
        trees = [repo.get(repo.get(repo.base_id(n), obj.Base).weights, obj.Tree) for n in ("pkl", "tiny")]
        assert trees[0].entries == trees[1].entries
    finally:
        repo.close()
    assert not marker.exists()

