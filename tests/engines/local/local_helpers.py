"""Helpers shared by the local-engine tests."""

from __future__ import annotations


def parity_reward(texts, golds):
    """A deterministic toy reward with mixed groups on a random model: 1 for responses of even length."""
    return [float(len(t) % 2 == 0) for t in texts]
