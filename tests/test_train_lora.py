"""Factors read out of peft: exact for linear layers, transposed right for GPT-2's Conv1D,
scaled as peft scales (rslora included); targets checked against the model."""

from __future__ import annotations

import pytest
import torch

from persona.errors import InvalidInput
from persona.train import lora


def _randomise(peft_model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _check_against_merge(peft_model) -> dict[str, lora.Factors]:
    base = {k: v.detach().clone() for k, v in peft_model.get_base_model().state_dict().items()
            if ".lora_" not in k and ".base_layer" not in k}
    base.update({k.replace(".base_layer", ""): v.detach().clone()
                 for k, v in peft_model.get_base_model().state_dict().items() if ".base_layer" in k})
    factors = lora.extract(peft_model)
    merged = peft_model.merge_and_unload().state_dict()
    assert factors
    for name, factor in factors.items():
        delta = factor.scale * (factor.B @ factor.A)
        assert delta.shape == merged[name].shape
        torch.testing.assert_close(base[name] + delta, merged[name], rtol=0, atol=1e-6)
    return factors


def test_gpt2_conv1d_factors_are_transposed_to_the_weight_layout():
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=32))
    layers = lora.check_targets(model, ["c_attn"], {f"{n}.weight" for n, _ in model.named_modules()})
    assert layers == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=layers, fan_in_fan_out=True))
    _randomise(peft_model, 1)
    factors = _check_against_merge(peft_model)
    assert factors["transformer.h.0.attn.c_attn.weight"].A.shape == (4, 96)  # Conv1D weight is in x out


def test_rslora_scale_and_exact_factors(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    names = {f"{n}.weight" for n, _ in model.named_modules()}
    settings = lora.LoraSettings(rank=4, alpha=8.0, target_modules=("o_proj",), rslora=True)
    peft_model = lora.attach(model, settings, lora.check_targets(model, settings.target_modules, names), seed=0)
    _randomise(peft_model, 2)
    modules = dict(peft_model.get_base_model().named_modules())
    factors = lora.extract(peft_model)
    assert sorted(factors) == ["model.layers.0.self_attn.o_proj.weight", "model.layers.1.self_attn.o_proj.weight"]
    for name, factor in factors.items():
        module = modules[name.removesuffix(".weight")]
        assert factor.scale == 8.0 / 2.0  # alpha / sqrt(r)
        assert torch.equal(factor.A, module.lora_A["default"].weight)
        assert torch.equal(factor.B, module.lora_B["default"].weight)
    _check_against_merge(peft_model)


def test_attach_is_seeded(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    def init(seed: int) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
        layers = lora.check_targets(model, ("q_proj",), {f"{n}.weight" for n, _ in model.named_modules()})
        peft_model = lora.attach(model, lora.LoraSettings(rank=2, alpha=4.0, target_modules=("q_proj",)), layers, seed)
        return next(p for n, p in peft_model.named_parameters() if "lora_A" in n).detach().clone()

    assert torch.equal(init(3), init(3)) and not torch.equal(init(3), init(4))


def test_targets_are_checked(tiny_model_dir):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    stored = {f"{n}.weight" for n, _ in model.named_modules()}
    assert len(lora.check_targets(model, ("all-linear",), stored)) == 14  # 7 per block, no lm_head
    with pytest.raises(InvalidInput, match="matches no layer") as info:
        lora.check_targets(model, ("qproj",), stored)
    assert "q_proj" in info.value.hint and "all-linear" in info.value.hint
    with pytest.raises(InvalidInput, match="not a linear layer"):
        lora.check_targets(model, ("mlp",), stored)
    tied = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, tie_word_embeddings=True))
    stored_tied = {f"{n}.weight" for n, _ in tied.named_modules()} - {"lm_head.weight"}
    with pytest.raises(InvalidInput, match="not stored in the base"):
        lora.check_targets(tied, ("lm_head",), stored_tied)
    for bad in (lora.LoraSettings(rank=0), lora.LoraSettings(alpha=0.0), lora.LoraSettings(dropout=1.0),
                lora.LoraSettings(target_modules=())):
        with pytest.raises(InvalidInput):
            bad.validate()
