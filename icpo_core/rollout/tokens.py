"""A batch of generated responses as tensors (:class:`Rollouts`, :func:`left_pad`, :func:`response_mask_from`),
shared by the local engine's hf and vLLM rollouts. Which ids end a response: :mod:`icpo_core.rollout.eos`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Rollouts:
    """Generated responses of a batch of prompts (row i answers prompt i).

    ``response_ids`` is right-padded with ``pad_token_id``; ``response_mask`` is 1 on generated tokens up to
    and including the first EOS.
    """

    response_ids: torch.Tensor  # [N, T] long, on CPU
    response_mask: torch.Tensor  # [N, T] long, on CPU
    texts: list[str]  # decoded responses, special tokens skipped
    prefill_tokens: int  # real (non-pad) prompt tokens that were prefilled
    gen_tokens: int  # generated tokens (sum of response_mask)
    # [N, T] float: the engine's log-prob of each sampled token (vLLM, when asked for)
    logprobs: torch.Tensor | None = None

    @property
    def lengths(self) -> list[int]:
        return self.response_mask.sum(-1).tolist()


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(ids, attention_mask)`` of shape [N, max_len]."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def response_mask_from(tokens: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """1 for every token up to and including the first EOS of each row (all ones when a row has no EOS)."""
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= tokens == e
    # Number of EOS tokens strictly before each position: the position belongs to the response while it is 0.
    eos_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    return (eos_before == 0).long()
