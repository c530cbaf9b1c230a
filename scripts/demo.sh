#!/usr/bin/env bash
# Set everything up and run the demo on the embedded SmolLM2-135M-Instruct:
# a store, the base, two behaviours as LoRA task vectors, recipes committed and
# merged (TIES with a negated vector), history, diff, a deployable build that
# transformers loads and generates with; two prompt sections (identity, style)
# distilled into vectors, merged, and AER measured on held-out probes;
# rollback and its undo, fsck, gc, compaction.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PATH="$PWD/.venv/bin:$PATH"
DEMO=${DEMO_DIR:-demo}
rm -rf "$DEMO"
mkdir -p "$DEMO"
export PERSONA_STORE="$DEMO/store"

START=$SECONDS
# Each step's wall time goes to $DEMO/timings.txt (the README's timings come from there).
step() {
    local t0=$SECONDS
    local shown=() arg
    for arg in "$@"; do  # show the command as typed: arguments with spaces or braces quoted
        if [[ $arg =~ [[:space:]{}] ]]; then shown+=("\"$arg\""); else shown+=("$arg"); fi
    done
    printf '\n$ %s\n' "${shown[*]}"
    "$@"
    printf '%5ss  %s\n' "$((SECONDS - t0))" "$*" >> "$DEMO/timings.txt"
}

step persona init "$DEMO/store"
step persona base import smollm2
step persona base show smollm2
# Behaviours to import: LoRA adapters made with peft on the exported base.
step persona base export smollm2 -o "$DEMO/smollm2-hf"
python examples/make_demo_adapter.py "$DEMO/smollm2-hf" "$DEMO/adapters/listening" --seed 1
python examples/make_demo_adapter.py "$DEMO/smollm2-hf" "$DEMO/adapters/suggesting" --seed 2
step persona vector import listening --adapter "$DEMO/adapters/listening"
step persona vector import suggesting --adapter "$DEMO/adapters/suggesting"
step persona vector list
step persona commit -f recipes/timmy-listening-only.yaml -m "listening only"
step persona merge -f recipes/timmy.yaml -m "more listening, less suggesting"
step persona log
step persona diff HEAD~1 HEAD
step persona build -o "$DEMO/out/timmy"
printf '\n$ python -c "load %s with transformers and generate"\n' "$DEMO/out/timmy"
python - "$DEMO/out/timmy" <<'PY'
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                 add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
PY
# Bake two sections of a system prompt into the weights, each distilled into its own vector with
# persona's defaults (built-in prompt set, section-derived checks, rejection sampling, held-out split).
step persona aer --tokens-only --prompt examples/aer/SOUL.md
step persona aer --check-probes --prompt examples/aer/SOUL.md --probes examples/aer/probes.yaml
step persona train identity --distill examples/aer/SOUL.md --section Identity
step persona train style --distill examples/aer/SOUL.md --section Style
step persona vector show identity
step persona merge -f recipes/timmy-soul.yaml -m "bake identity and style into the weights"
# AER on held-out probes: none of them is near a prompt either vector was trained on.
step persona aer --check-probes --prompt examples/aer/SOUL.md --probes examples/aer/probes.yaml
step persona aer --prompt examples/aer/SOUL.md --probes examples/aer/probes.yaml --max-new-tokens 32
step persona aer --history
step persona rollback HEAD~1 -m "too much at once"
step persona log -n 1
step persona rollback "HEAD@{1}" -m "undo the rollback"
step persona reflog
step persona fsck
step persona gc --dry-run
# Deterministic context compaction of an agent session (zero inference).
step persona compact examples/sessions/hermes_debug_session.json --tokenizer smollm2 --context-window 8192 \
    -o "$DEMO/compacted_session.json"
printf '\ndemo finished in %dm%02ds (setup excluded): the store is in %s, step times in %s\n' \
    "$(((SECONDS - START) / 60))" "$(((SECONDS - START) % 60))" "$DEMO/store" "$DEMO/timings.txt"
