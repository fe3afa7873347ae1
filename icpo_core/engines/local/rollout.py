"""Rollouts of the local engine: one interface (:class:`RolloutEngine`), two backends.

- ``hf``: transformers ``model.generate`` on the live policy (left padding, KV cache, temperature / top_p, stop
  at EOS). The sampler is ``model.generate`` itself (no custom decode loop): :func:`generate` only pads, seeds and
  splits the output into response tokens and a response mask (every token up to and including the first EOS).
- ``vllm``: a colocated offline vLLM engine that the trainer pushes its weights into after every optimizer step
  (:mod:`.vllm_rollout`; the engine is started by :mod:`icpo_core.rollout.vllm_engine`, shared with the bench).

:func:`make_rollout_engine` picks one from ``train.rollout_backend``; when vLLM cannot be imported or started it
falls back to ``hf`` with one warning naming the cause.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import GenerationConfig

from icpo_core.engines.local.vllm_rollout import VLLMRolloutEngine
from icpo_core.errors import UserError
from icpo_core.rollout.eos import eos_token_ids
from icpo_core.rollout.tokens import Rollouts, left_pad, response_mask_from
from icpo_core.rollout.vllm_engine import VLLMUnavailable

__all__ = [
    "HFRolloutEngine",
    "RolloutEngine",
    "Rollouts",
    "eos_token_ids",
    "generate",
    "left_pad",
    "make_rollout_engine",
    "response_mask_from",
]

log = logging.getLogger(__name__)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Rollouts:
    """Sample one response per prompt (token-id lists, already chat-templated) with ``model.generate``.

    Prompts are generated in chunks of ``batch_size`` (all at once when None), each left-padded to its own
    longest prompt. ``temperature == 0`` means greedy. ``seed`` re-seeds torch's RNG first (generate samples
    from the global generator), which makes a step's rollouts reproducible, also after a resume.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = eos_token_ids(model, tokenizer)
    sampling = temperature > 0
    gen_config = GenerationConfig(
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=0 if sampling else None,  # no top-k truncation: sample the full distribution (verl: top_k -1)
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        use_cache=True,
    )
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    prefill = 0
    step = batch_size or len(prompts)
    try:
        for start in range(0, len(prompts), step):
            ids, mask = left_pad(prompts[start : start + step], pad_id)
            prefill += int(mask.sum())
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_config
                )
            chunks.append(out[:, ids.shape[1] :].cpu())
    finally:
        model.train(was_training)
    width = max(c.shape[1] for c in chunks)
    response = torch.cat(
        [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad_id) for c in chunks], dim=0
    )
    resp_mask = response_mask_from(response, eos_ids)
    response = torch.where(resp_mask.bool(), response, torch.full_like(response, pad_id))
    texts = tokenizer.batch_decode(
        [row[m.bool()].tolist() for row, m in zip(response, resp_mask, strict=True)], skip_special_tokens=True
    )
    return Rollouts(
        response_ids=response,
        response_mask=resp_mask,
        texts=texts,
        prefill_tokens=prefill,
        gen_tokens=int(resp_mask.sum()),
    )


# ------------------------------------------------------------------------------------------ engines


class RolloutEngine(Protocol):
    """What the trainer needs from a rollout backend."""

    name: str

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Rollouts: ...

    def push_weights(self, model: Any) -> float: ...

    def close(self) -> None: ...


class HFRolloutEngine:
    """``model.generate`` on the trainer's own model: nothing to push, the policy is sampled directly."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, *, autocast_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.autocast_dtype = autocast_dtype

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Rollouts:
        """:func:`generate` on the live policy (see there)."""
        return generate(
            self.model,
            self.tokenizer,
            prompt_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            autocast_dtype=self.autocast_dtype,
        )

    def push_weights(self, model: Any) -> float:
        """Nothing to do: generation reads the policy's weights."""
        return 0.0

    def close(self) -> None:
        """Nothing to release (the model belongs to the trainer)."""


def make_rollout_engine(
    backend: str,
    model: Any,
    tokenizer: Any,
    *,
    model_dir: str | Path,
    vllm_cfg: Any,
    device: torch.device,
    seed: int,
    max_model_len: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> RolloutEngine:
    """The engine of ``train.rollout_backend``; ``vllm`` falls back to ``hf`` with one warning if it cannot start.

    ``model_dir`` holds the weights ``model`` was loaded from (the vLLM engine starts from the same files, so
    the two agree before the first push).
    """
    if backend == "hf":
        return HFRolloutEngine(model, tokenizer, autocast_dtype=autocast_dtype)
    if backend != "vllm":
        raise UserError(f"train.rollout_backend: unknown backend '{backend}' (vllm | hf)")
    try:
        return VLLMRolloutEngine(
            model_dir,
            tokenizer,
            vllm_cfg,
            eos_ids=eos_token_ids(model, tokenizer),
            device_type=device.type,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=vllm_cfg.gpu_memory_utilization,
            per_request_seeds=vllm_cfg.per_request_seeds,
        )
    except VLLMUnavailable as e:
        log.warning(
            "train.rollout_backend is 'vllm' but %s; generating with transformers (hf) instead. Install the "
            "vLLM build of this machine (make setup / make setup-gpu) or set train.rollout_backend: hf.",
            e,
        )
        return HFRolloutEngine(model, tokenizer, autocast_dtype=autocast_dtype)
