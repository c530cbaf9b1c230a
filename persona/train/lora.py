"""LoRA through peft: configuration, target validation, and the factors it trained.

The store keeps a trained LoRA exactly as peft computes its delta:
``delta = scale * B @ A`` with ``A = lora_A.weight`` (r x in), ``B = lora_B.weight``
(out x r) and ``scale = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rslora),
which is peft's own ``scaling[adapter]``, read back rather than recomputed so the
two can never disagree. Layers stored transposed (GPT-2's ``Conv1D``, peft's
``fan_in_fan_out``) get their factors swapped and transposed, so the stored delta
always has the base tensor's shape.

Targets are checked against the loaded model before anything is trained: a name
that matches no layer, a layer that is not linear, or a layer whose weight the
base does not store (a tied ``lm_head``) is an error listing the linear layers
there are.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from persona.errors import InvalidInput

ALL_LINEAR = "all-linear"
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    alpha: float = 32.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.0
    rslora: bool = False

    def validate(self) -> None:
        if self.rank < 1:
            raise InvalidInput(f"--rank must be at least 1, got {self.rank}", "e.g. --rank 16")
        if not self.alpha > 0:
            raise InvalidInput(f"--lora-alpha must be positive, got {self.alpha}", "e.g. --lora-alpha 32")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInput(f"--lora-dropout must be in [0, 1), got {self.dropout}", "e.g. --lora-dropout 0")
        if not self.target_modules:
            raise InvalidInput("--target-modules is empty", "e.g. --target-modules q_proj,v_proj")

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "lora_alpha": float(self.alpha), "target_modules": list(self.target_modules),
                "lora_dropout": float(self.dropout), "use_rslora": self.rslora}


def parse_target_modules(text: str) -> tuple[str, ...]:
    """``"q_proj, v_proj"`` -> ``("q_proj", "v_proj")``, sorted and de-duplicated.

    Sorted because the order does not change what is trained, so it must not
    change the vector's id either.
    """
    names = sorted({part.strip() for part in text.split(",") if part.strip()})
    if not names:
        raise InvalidInput("--target-modules is empty", "e.g. --target-modules q_proj,v_proj")
    for name in names:
        if name != ALL_LINEAR and not _MODULE_NAME.match(name):
            raise InvalidInput(f"--target-modules: {name!r} is not a module name",
                               "give layer names such as q_proj,v_proj (or all-linear)")
    if ALL_LINEAR in names and len(names) > 1:
        raise InvalidInput("--target-modules: all-linear cannot be combined with other names",
                           "give either all-linear or a list of layer names")
    return tuple(names)


def _is_linear(module: Any) -> bool:
    import torch

    if isinstance(module, torch.nn.Linear):
        return True
    return type(module).__name__ == "Conv1D"  # transformers' GPT-2 style linear layer


def _output_layer_names(model: Any) -> set[str]:
    out = getattr(model, "get_output_embeddings", lambda: None)()
    return {name for name, module in model.named_modules() if module is out} if out is not None else set()


def check_targets(model: Any, targets: Iterable[str], stored: set[str]) -> list[str]:
    """The full names of the layers ``targets`` select; refuse any that cannot be trained.

    ``stored`` is the set of tensor names in the base's tree: a target whose
    weight is not stored (a tied output layer) could not be kept in a vector.
    """
    linear = {name for name, module in model.named_modules() if name and _is_linear(module)}
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in linear})
    hint = f"linear layers of {type(model).__name__}: {', '.join(suffixes)} (or all-linear)"
    chosen: set[str] = set()
    for target in targets:
        if target == ALL_LINEAR:
            # peft's all-linear leaves the output layer out; so do we.
            picked = {name for name in linear if f"{name}.weight" in stored} - _output_layer_names(model)
        else:
            matches = [name for name, _ in model.named_modules()
                       if name and (name == target or name.endswith("." + target))]
            if not matches:
                raise InvalidInput(f"--target-modules: {target!r} matches no layer of {type(model).__name__}", hint)
            not_linear = [name for name in matches if name not in linear]
            if not_linear:
                raise InvalidInput(f"--target-modules: {not_linear[0]} is not a linear layer", hint)
            unstored = [name for name in matches if f"{name}.weight" not in stored]
            if unstored:
                raise InvalidInput(f"--target-modules: {unstored[0]}.weight is not stored in the base "
                                   "(tied to the embeddings)", hint)
            picked = set(matches)
        chosen |= picked
    if not chosen:
        raise InvalidInput("--target-modules selects no layer", hint)
    return sorted(chosen)


def attach(model: Any, settings: LoraSettings, layers: list[str], seed: int) -> Any:
    """Wrap ``model`` in a peft LoRA model; A's random init is drawn from ``seed``.

    Only the LoRA parameters are trainable. ``target_modules`` is given to peft
    as ``layers``, the exact full names :func:`check_targets` returned, so peft's
    own suffix matching can never pick something the check did not.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        use_rslora=settings.rslora, bias="none", task_type="CAUSAL_LM",
        target_modules=list(layers),
    )
    torch.manual_seed(seed)
    try:
        with warnings.catch_warnings():
            # peft asks transformers a question transformers has renamed; nothing for our users to act on
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise InvalidInput(f"--target-modules: {exc}", "list linear layers such as q_proj,v_proj") from None


@dataclass(frozen=True)
class Factors:
    A: Any  # torch.Tensor, r x in
    B: Any  # torch.Tensor, out x r
    scale: float


def extract(peft_model: Any, adapter: str = "default") -> dict[str, Factors]:
    """Base tensor name -> the trained factors, as float32 CPU tensors."""
    import torch
    from peft.tuners.lora import LoraLayer

    out: dict[str, Factors] = {}
    for name, module in peft_model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer) or adapter not in getattr(module, "lora_A", {}):
            continue
        a = module.lora_A[adapter].weight.detach().to(device="cpu", dtype=torch.float32)
        b = module.lora_B[adapter].weight.detach().to(device="cpu", dtype=torch.float32)
        if getattr(module, "fan_in_fan_out", False):
            a, b = b.T, a.T  # (B @ A).T = A.T @ B.T
        out[f"{name}.weight"] = Factors(a.contiguous().clone(), b.contiguous().clone(),
                                        float(module.scaling[adapter]))
    return out
