"""The ids that end a response, one rule for every generation path (local hf / vLLM rollouts, both bench
backends): the generation config's EOS (an id or a list), then the tokenizer's, each once. The model's
``generation_config`` is read, never written. No torch import: the bench imports this at module top."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _merged_eos(generation_eos: int | Sequence[int] | None, tokenizer: Any) -> list[int]:
    """``generation_eos`` (an id, a list of ids or None) then the tokenizer's EOS, each once, in that order."""
    ids: list[int] = []
    gen = list(generation_eos) if isinstance(generation_eos, list | tuple) else [generation_eos]
    for e in [*gen, getattr(tokenizer, "eos_token_id", None)]:
        if e is not None and int(e) not in ids:
            ids.append(int(e))
    return ids


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids of a loaded model's generation config (may be a list) plus the tokenizer's EOS."""
    return _merged_eos(getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer)


def eos_token_ids_of_dir(model_dir: str | Path, tokenizer: Any) -> list[int]:
    """:func:`eos_token_ids` of a Hugging Face folder without loading the model: ``generation_config.json``, else
    ``config.json`` (transformers falls back to it too), plus the tokenizer's EOS."""
    for name in ("generation_config.json", "config.json"):
        path = Path(model_dir) / name
        if path.is_file():
            return _merged_eos(json.loads(path.read_text()).get("eos_token_id"), tokenizer)
    return _merged_eos(None, tokenizer)
