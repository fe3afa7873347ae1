"""Helpers shared by the local-engine tests."""

from __future__ import annotations


def parity_reward(texts, golds):
    """A deterministic toy reward with mixed groups on a random model: 1 for responses of even length."""
    return [float(len(t) % 2 == 0) for t in texts]


def randomise_adapters(model, seed: int, scale: float) -> None:
    """Non-zero LoRA A and B everywhere (B starts at zero, which would make every LoRA check trivially pass)."""
    import torch

    from icpo_core.engines.local import lora

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if lora.is_adapter_key(name):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
