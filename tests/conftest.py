"""Session-wide test fixtures: tiny random models built once per test run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.tiny import (
    make_finetuned_dir,
    make_peft_lora_adapter,
    make_tiny_llama_dir,
    make_tiny_tokenizer,
)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    return make_tiny_llama_dir(
        tmp_path_factory.mktemp("tiny_model"), seed=0, tokenizer_dir=tiny_tokenizer_dir
    )


@pytest.fixture(scope="session")
def tiny_model_dir_b(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """Same architecture, another seed: an incompatible base."""
    return make_tiny_llama_dir(
        tmp_path_factory.mktemp("tiny_model_b"), seed=1, tokenizer_dir=tiny_tokenizer_dir
    )


@pytest.fixture(scope="session")
def tiny_lora_adapter(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> tuple[Path, dict]:
    """(adapter dir, {base weight name: expected dense delta from peft's merge})."""
    return make_peft_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("tiny_lora"), seed=1)


@pytest.fixture(scope="session")
def tiny_lora_adapter_rslora(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> tuple[Path, dict]:
    return make_peft_lora_adapter(
        tiny_model_dir, tmp_path_factory.mktemp("tiny_lora_rs"), seed=2, use_rslora=True
    )


@pytest.fixture(scope="session")
def tiny_finetuned_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_finetuned_dir(tiny_model_dir, tmp_path_factory.mktemp("tiny_ft"), seed=3)
