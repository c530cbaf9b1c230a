"""Read a PEFT LoRA adapter as exact per-weight factors: delta W = scale * B @ A.

PEFT saves ``adapter_config.json`` + ``adapter_model.safetensors`` with keys
like ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``. We
map each pair to the base weight it modifies
(``model.layers.0.self_attn.q_proj.weight``) with its scale: ``alpha / r``,
or ``alpha / sqrt(r)`` with rsLoRA, honouring ``rank_pattern`` and
``alpha_pattern`` the way PEFT resolves them. Everything whose merge is not
exactly ``scale * B @ A`` (DoRA, bias training, modules_to_save, conv
layers, other PEFT methods) is refused with a hint rather than approximated:
a silently wrong vector is worse than none. Transposed layouts
(``fan_in_fan_out``, embedding LoRA) are rewritten into the same form exactly.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from persona.errors import InvalidInput, NotFound, UnsafeInput
from persona.tensorio.hf_dir import PICKLE_HINT, load_pickle_weights
from persona.tensorio.safetensors_reader import SafetensorsFile

if TYPE_CHECKING:
    import torch

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"

_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?!weight$)(?P<adapter>[A-Za-z0-9_\-]+))?(?:\.weight)?$"
)

#: config switches that change the forward pass beyond scale * B @ A
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA rescales the merged weight by a learned magnitude",
    "lora_bias": "the adapter trains a bias on lora_B",
    "use_qalora": "QA-LoRA pools inputs before the adapter",
    "alora_invocation_tokens": "activated LoRA only applies after its invocation tokens",
    "trainable_token_indices": "the adapter trains individual token embeddings",
    "target_parameters": "LoRA on raw parameters (e.g. MoE experts) is not a per-module delta",
    "layer_replication": "the adapter duplicates base layers",
    "use_bdlora": "block-diagonal LoRA shares factors across shards",
    "arrow_config": "Arrow routes between several adapters at run time",
    "monteclora_config": "MonteCLoRA samples its factors",
}


@dataclass(frozen=True)
class LoraFactor:
    """delta W = scale * B @ A, with A (r x in) and B (out x r), in the base's layout."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense delta, computed in float32 (then cast to ``dtype`` if given)."""
        import torch

        d = (self.B.to(torch.float32) @ self.A.to(torch.float32)) * self.scale
        return d if dtype is None else d.to(dtype)


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter keyed by the base weight each factor modifies."""

    path: Path
    base_model_name_or_path: str | None
    factors: dict[str, LoraFactor]
    config: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def match_pattern(patterns: dict, module: str) -> str | None:
    """The first pattern key that names ``module`` the way PEFT's get_pattern_key does.

    A key matches when it equals the whole module path or a dotted suffix of
    it, read as a regular expression: ``q_proj`` matches
    ``model.layers.0.self_attn.q_proj``; ``layers.0.self_attn.q_proj`` only
    that layer's.
    """
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def _refuse(path: Path, why: str, hint: str) -> InvalidInput:
    return InvalidInput(f"{path}: {why}", hint)


def _check_config(config: dict, path: Path) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise _refuse(
            path,
            f"PEFT type {config.get('peft_type')!r} is not LoRA",
            "only LoRA adapters can be imported as factors; import a merged checkpoint instead",
        )
    for flag, why in _UNSUPPORTED_FLAGS.items():
        if config.get(flag):
            raise _refuse(
                path,
                f"{flag} is set: {why}, which is not an exact scale * B @ A delta",
                "merge the adapter into the base with PEFT and import the result as a full checkpoint",
            )
    if config.get("modules_to_save"):
        raise _refuse(
            path,
            f"modules_to_save {config['modules_to_save']} replaces whole modules",
            "merge the adapter with PEFT and import the merged model as a full checkpoint",
        )
    bias = config.get("bias", "none")
    if bias not in (None, "none"):
        raise _refuse(
            path,
            f"bias={bias!r} trains base biases alongside the adapter",
            "retrain with bias='none', or import the merged model as a full checkpoint",
        )
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise _refuse(path, f"{key} must be a positive number, got {value!r}", "fix adapter_config.json")


def _load_weights(adapter_dir: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    st = adapter_dir / WEIGHTS_NAME
    if st.is_file():
        with SafetensorsFile(st) as f:
            return dict(f.iter_tensors())
    pkl = adapter_dir / PICKLE_NAME
    if pkl.is_file():
        if not allow_pickle:
            raise UnsafeInput(f"{pkl}: pickle checkpoints can execute code when loaded", PICKLE_HINT)
        return load_pickle_weights(pkl)
    raise NotFound(f"{adapter_dir} has no {WEIGHTS_NAME}", "save the adapter with save_pretrained()")


def read_lora_adapter(path: str | Path, allow_pickle: bool = False) -> LoraAdapter:
    """Read and check a PEFT LoRA adapter directory."""
    adapter_dir = Path(path)
    config_path = adapter_dir / CONFIG_NAME
    if not adapter_dir.is_dir():
        raise NotFound(f"no such adapter directory: {adapter_dir}", "pass the directory save_pretrained wrote")
    if not config_path.is_file():
        raise InvalidInput(f"{adapter_dir} has no {CONFIG_NAME}: not a PEFT adapter", "pass a PEFT adapter dir")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{config_path} is not valid JSON ({exc})", "fix or re-save the adapter") from None
    if not isinstance(config, dict):
        raise InvalidInput(f"{config_path} must be a JSON object", "fix or re-save the adapter")
    _check_config(config, config_path)
    weights = _load_weights(adapter_dir, allow_pickle)

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    adapters: set[str] = set()
    warnings: list[str] = []
    for key, tensor in sorted(weights.items()):
        if key.endswith(".base_layer.weight"):
            # PEFT saves the frozen embedding it wrapped (save_embedding_layers): the
            # base's own weights, not part of the delta. A resized vocabulary shows up
            # as a shape mismatch against the base when the vector is used.
            warnings.append(
                f"{adapter_dir}: ignored saved base weight {key} {tuple(tensor.shape)} (frozen, not a delta)"
            )
            continue
        m = _KEY.match(key)
        if m is None:
            raise _refuse(
                adapter_dir / WEIGHTS_NAME,
                f"tensor {key} is not a LoRA factor",
                "the adapter saves full weights (modules_to_save or biases); import the merged model instead",
            )
        if m["adapter"]:
            adapters.add(m["adapter"])
        pairs.setdefault(m["module"], {})[m["kind"]] = tensor
    if len(adapters) > 1:
        raise _refuse(adapter_dir, f"holds several adapters {sorted(adapters)}", "save one adapter per directory")
    if not pairs:
        raise _refuse(adapter_dir / WEIGHTS_NAME, "holds no LoRA factors", "re-save the adapter")

    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    factors: dict[str, LoraFactor] = {}
    for module, parts in sorted(pairs.items()):
        factors[f"{module}.weight"] = _factor(
            adapter_dir, module, parts, config, rank_pattern, alpha_pattern, fan_in_fan_out
        )
    base = config.get("base_model_name_or_path")
    return LoraAdapter(
        path=adapter_dir,
        base_model_name_or_path=str(base) if base else None,
        factors=factors,
        config=config,
        warnings=warnings,
    )


def _factor(
    adapter_dir: Path,
    module: str,
    parts: dict[str, torch.Tensor],
    config: dict,
    rank_pattern: dict,
    alpha_pattern: dict,
    fan_in_fan_out: bool,
) -> LoraFactor:
    where = adapter_dir / WEIGHTS_NAME
    embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
    a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
    if set(parts) != {a_key, b_key}:
        raise _refuse(where, f"module {module} has {sorted(parts)}, expected {a_key} and {b_key}", "re-save the adapter")
    a, b = parts[a_key], parts[b_key]
    if a.dim() != 2 or b.dim() != 2:
        raise _refuse(
            where,
            f"module {module} has {a.dim()}-D factors (a convolution?); only linear and embedding LoRA are supported",
            "merge the adapter with PEFT and import the merged model as a full checkpoint",
        )
    if a.shape[0] != b.shape[1]:
        raise _refuse(where, f"module {module}: A {tuple(a.shape)} and B {tuple(b.shape)} ranks differ", "re-save the adapter")

    r_key = match_pattern(rank_pattern, module)
    alpha_key = match_pattern(alpha_pattern, module)
    r = rank_pattern[r_key] if r_key is not None else config["r"]
    alpha = alpha_pattern[alpha_key] if alpha_key is not None else config["lora_alpha"]
    if int(a.shape[0]) != int(r):
        raise _refuse(
            where,
            f"module {module} has rank {a.shape[0]} but the config gives r={r}",
            "the config and the weights disagree; re-save the adapter",
        )
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r

    if embedding:
        # PEFT: delta = (B_e @ A_e).T with A_e (r x vocab), B_e (dim x r)
        #     = A_e.T @ B_e.T  ->  B = A_e.T (vocab x r), A = B_e.T (r x dim)
        return LoraFactor(A=b.T.contiguous(), B=a.T.contiguous(), scale=float(scale))
    if fan_in_fan_out:
        # the base stores (in x out): delta = (B @ A).T = A.T @ B.T
        return LoraFactor(A=b.T.contiguous(), B=a.T.contiguous(), scale=float(scale))
    return LoraFactor(A=a, B=b, scale=float(scale))
