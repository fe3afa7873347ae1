"""Per-token log-probabilities of responses, computing logits only at response positions.

A sequence is ``[left-padded prompt | right-padded response]``. Full-vocabulary logits are materialised only
for the positions that predict response tokens (``logits_to_keep``): for a 49k vocabulary the prompt positions
would otherwise dominate memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from icpo_core.rollout.tokens import left_pad


@dataclass
class SequenceBatch:
    """Model inputs of ``[prompt | response]`` rows with the response part aligned at column ``prompt_width``."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    position_ids: torch.Tensor  # [B, P + T]
    response_ids: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T]

    @property
    def response_width(self) -> int:
        return self.response_ids.shape[1]

    def to(self, device: torch.device) -> SequenceBatch:
        return SequenceBatch(*(t.to(device) for t in vars(self).values()))

    def rows(self, start: int, stop: int) -> SequenceBatch:
        """Rows ``start:stop`` with the columns that are padding in all of them cut away (less compute)."""
        attn = self.attention_mask[start:stop]
        t = self.response_width
        prompt_real = attn[:, :-t].sum(0) > 0
        first = int(prompt_real.float().argmax()) if bool(prompt_real.any()) else attn.shape[1] - t
        resp_len = max(1, int(self.response_mask[start:stop].sum(-1).max()))
        cols = slice(first, attn.shape[1] - t + resp_len)
        return SequenceBatch(
            input_ids=self.input_ids[start:stop, cols],
            attention_mask=attn[:, cols],
            position_ids=self.position_ids[start:stop, cols],
            response_ids=self.response_ids[start:stop, :resp_len],
            response_mask=self.response_mask[start:stop, :resp_len],
        )


def build_sequences(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[torch.Tensor],
    response_masks: Sequence[torch.Tensor],
    pad_id: int,
) -> SequenceBatch:
    """Join left-padded prompts with right-padded responses (trimmed to the longest real response)."""
    p_ids, p_mask = left_pad(prompts, pad_id)
    width = max(1, max(int(m.sum()) for m in response_masks))
    r_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    r_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, (r, m) in enumerate(zip(responses, response_masks, strict=True)):
        n = int(m.sum())
        r_ids[i, :n] = r[:n]
        r_mask[i, :n] = 1
    attention = torch.cat([p_mask, r_mask], dim=1)
    # Positions count real tokens only, exactly as generate() derives them from the attention mask.
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return SequenceBatch(
        input_ids=torch.cat([p_ids, r_ids], dim=1),
        attention_mask=attention,
        position_ids=position_ids,
        response_ids=r_ids,
        response_mask=r_mask,
    )


def response_logits(model: Any, batch: SequenceBatch, temperature: float = 1.0) -> torch.Tensor:
    """Logits [B, T, V] (fp32) of the positions that predict each response token, divided by ``temperature``.

    Dividing by the rollout temperature makes the log-probs those of the distribution the rollouts were
    sampled from (as verl's actor does).
    """
    t = batch.response_width
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        logits_to_keep=t + 1,  # the last t+1 positions; the final one predicts past the response
    )
    logits = out.logits[:, :-1, :].float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per position, [B, T]."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def batched_log_probs(
    model: Any,
    batch: SequenceBatch,
    micro_batch_size: int,
    temperature: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """No-grad response log-probs [B, T] in micro-batches (old policy / reference passes), on CPU.

    Positions outside the response mask hold 0.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
    try:
        for s in range(0, batch.input_ids.shape[0], micro_batch_size):
            mb = batch.rows(s, s + micro_batch_size).to(device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = response_logits(model, mb, temperature)
            lp = token_log_probs(logits, mb.response_ids) * mb.response_mask
            out[s : s + mb.input_ids.shape[0], : mb.response_width] = lp.float().cpu()
    finally:
        model.train(was_training)
    return out
