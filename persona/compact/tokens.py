"""Token counting for the trigger and the report.

Without a tokenizer, a message's tokens are approximated as ``ceil(chars / 4)``
(a common rule of thumb for English and code) and the report says "approx".
With ``--tokenizer`` the count is exact for the message text, using the fast
Rust ``tokenizers`` library directly (``Tokenizer.from_file``), never
transformers: loading it costs milliseconds instead of seconds.

A message costs its text (content, plus each tool call's name and arguments)
plus ``MESSAGE_OVERHEAD_TOKENS`` for the chat template's framing
(``<|im_start|>role\\n ... <|im_end|>\\n`` in ChatML). The framing is an
estimate: persona does not render the model's chat template, whose exact cost
varies by model; what matters for compaction is that removing a message is
counted as saving its framing too.

The context window comes from ``--context-window``, else from
``max_position_embeddings`` (or GPT-2's ``n_positions``) in the ``config.json``
next to the tokenizer. There is no silent default: a trigger decision without a
window is an error that says how to give one.

``--tokenizer smollm2`` resolves through ``persona.tensorio.smollm2.tokenizer_dir()``,
imported only when asked for so that ``persona compact`` stays light.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from persona.compact.content import message_text
from persona.errors import InvalidInput, NotFound

MESSAGE_OVERHEAD_TOKENS = 4

_SPEC_HINT = "give --tokenizer smollm2, an HF model directory holding tokenizer.json, or a tokenizer.json file"


class TokenCounter:
    """Counts tokens of texts; ``approx`` says whether the counts are estimates."""

    name: str = "approx"
    approx: bool = True
    context_window: int | None = None

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text: ``ceil(len / 4)`` for the approximate counter."""
        return [math.ceil(len(text) / 4) for text in texts]


class ApproxCounter(TokenCounter):
    """The default: no tokenizer, four characters per token."""


class TokenizerCounter(TokenCounter):
    """Exact counts from a ``tokenizer.json``, cached per distinct text."""

    approx = False

    def __init__(self, tokenizer: Any, name: str, context_window: int | None) -> None:
        self._tokenizer = tokenizer
        self.name = name
        self.context_window = context_window
        self._cache: dict[str, int] = {}

    def count(self, texts: Sequence[str]) -> list[int]:
        missing = list(dict.fromkeys(text for text in texts if text not in self._cache))
        if missing:
            encodings = self._tokenizer.encode_batch_fast(missing, add_special_tokens=False)
            for text, encoding in zip(missing, encodings, strict=True):
                self._cache[text] = len(encoding.ids)
        return [self._cache[text] for text in texts]


def message_tokens(messages: Sequence[dict[str, Any]], counter: TokenCounter) -> list[int]:
    """Tokens each message costs in the prompt (text plus template framing)."""
    counts = counter.count([message_text(message) for message in messages])
    return [count + MESSAGE_OVERHEAD_TOKENS for count in counts]


def window_from_config(config_path: Path) -> int | None:
    """``max_position_embeddings`` (or ``n_positions``) from an HF ``config.json``."""
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InvalidInput(
            f"cannot read {config_path}: {exc}", "fix or remove the config.json"
        ) from exc
    if not isinstance(data, dict):
        return None
    for key in ("max_position_embeddings", "n_positions"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _smollm2_dir() -> Path:
    try:
        from persona.tensorio.smollm2 import tokenizer_dir
    except (ImportError, AttributeError) as exc:
        raise NotFound(
            "the smollm2 tokenizer is not available in this build of persona",
            "pass --tokenizer with an HF model directory or a tokenizer.json file instead",
        ) from exc
    return Path(tokenizer_dir())


def resolve_tokenizer(spec: str | None) -> TokenCounter:
    """Turn a ``--tokenizer`` spec into a counter (``None``: the approximate one)."""
    if spec is None:
        return ApproxCounter()
    if spec == "smollm2":
        path = _smollm2_dir()
        name = "smollm2"
    else:
        path = Path(spec)
        name = str(spec)
    if path.is_dir():
        file = path / "tokenizer.json"
        if not file.is_file():
            raise NotFound(f"no tokenizer.json in {path}", _SPEC_HINT)
    elif path.is_file():
        file = path
    else:
        raise NotFound(f"tokenizer not found: {spec}", _SPEC_HINT)
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust side raises a bare Exception on bad files
        raise InvalidInput(f"cannot load tokenizer {file}: {exc}", _SPEC_HINT) from exc
    window = window_from_config(file.parent / "config.json")
    return TokenizerCounter(tokenizer, name, window)
