"""Make a small PEFT LoRA adapter for the demo, from a model directory.

Until a behaviour is trained with `persona train`, the demo needs adapters to
import: this makes a rank-8 LoRA on q_proj/v_proj with seeded random factors
(peft initialises B to zero, which would be a no-op vector). The weights are
synthetic: the point is the version control, not the behaviour.

    python examples/make_demo_adapter.py MODEL_DIR OUT_DIR --seed 1 --scale 0.02
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=0.02)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=["q_proj", "v_proj"],
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft asks transformers a question transformers has renamed
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, args.scale)
    peft_model.save_pretrained(args.out_dir)
    print(f"wrote LoRA adapter to {args.out_dir}")


if __name__ == "__main__":
    main()
