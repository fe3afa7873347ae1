"""The local engine: GRPO / ICPO with torch + transformers on CPU or one CUDA device (see trainer.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from icpo_core.config import Params


def train_local(params: Params, run: str, **kwargs: Any) -> dict[str, Any]:
    """Train (or resume) one run in-process; see :func:`icpo_core.engines.local.trainer.train_local`."""
    from icpo_core.engines.local.trainer import train_local as _train

    return _train(params, run, **kwargs)


__all__ = ["train_local"]
