"""Training behaviours into task vectors: LoRA on chat data, and context distillation.

Modules, each small and testable on its own:

- ``data``: chat data in (JSONL, Hermes/OpenAI sessions, prompt lists), validated with
  line numbers, rendered with the base's chat template, with assistant-only labels.
- ``lora``: the peft configuration, target-module validation, and the factors
  (A, B, scale) read back out of a trained peft model.
- ``loop``: the training loop (accelerate, deterministic batch order, checkpoints,
  resume, clean interrupts).
- ``distill``: the teacher's cached greedy answers and top-k log-probabilities, and
  the KL objective.
- ``probe_test``: a vector alone on its base against a probe file.
- ``porcelain``: ``train_sft``, ``train_distill``, ``test_vector``.

Nothing here is imported by ``persona --help``; torch, transformers and peft are
imported inside the functions that need them.
"""
