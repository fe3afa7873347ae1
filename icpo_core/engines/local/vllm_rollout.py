"""The local engine's rollouts from a colocated vLLM engine (:class:`VLLMRolloutEngine`) and the in-place push of
the policy's weights into it (:func:`push_weights`).

The engine is started by :func:`icpo_core.rollout.vllm_engine.start_llm` (environment, in-process worker, no
chunked prefill; shared with the bench). What is the local engine's own:

- the weight push goes through the in-process worker's ``reload_weights`` with an in-memory iterator (no disk; a
  second ``load_weights`` fails on the CPU build), then re-packs the LM head tied to the embeddings
  (:func:`icpo_core.rollout.vllm_engine.repack_lm_head`); a LoRA policy is pushed merged
  (:func:`icpo_core.engines.local.lora.export_weights`); the prefix cache, which holds KV computed with the old
  weights, is reset after every push;
- sampling is seeded per call, not per request: :meth:`VLLMRolloutEngine.generate` re-seeds torch's global RNG
  (which the in-process engine samples from) with the step's seed and restores it after, as the ``hf`` path
  seeds ``model.generate``. A call's draws are a function of (weights, prompts, seed), so a step is
  reproducible and a resumed run draws what it would have; a request's draws depend on the rest of its call.
  Per-request generators (``train.vllm.per_request_seeds``) make each request independent of its batch but
  send the CPU sampler down a per-row slow path (measured 0.6x the tokens/s, docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from icpo_core.engines.local.lora import export_weights
from icpo_core.rollout.tokens import Rollouts, response_mask_from
from icpo_core.rollout.vllm_engine import import_vllm, repack_lm_head, shutdown_llm, start_llm

_SEED_MOD = 2**63


def request_seeds(seed: int, n: int) -> list[int]:
    """One seed per request, derived from the call's seed (``per_request_seeds``): a request's samples then do not
    depend on its batch."""
    return [(seed + i) % _SEED_MOD for i in range(n)]


# ------------------------------------------------------------------------------------------ weight push


def _reload_on_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs on the vLLM worker (in this process): reload in place, then re-pack the (tied) LM head."""
    worker.reload_weights(weights_iterator=iter(weights))
    repack_lm_head(worker.model_runner.get_model())


def push_weights(llm: Any, model: torch.nn.Module) -> float:
    """Copy ``model``'s current weights into the engine in place (no disk); returns the seconds it took.

    A LoRA policy (peft) is pushed merged, ``W0 + scale * B @ A`` (:func:`.lora.export_weights`, computed on
    copies: the training model is not touched), so the engine serves it without LoRA support.
    """
    t0 = time.perf_counter()
    # The reload warns on every push about layers the checkpoint format has no weights for (the tied LM head,
    # rotary buffers): expected here, so quiet for the push.
    reload_log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    level = reload_log.level
    reload_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            weights = list(export_weights(model).items())
            llm.collective_rpc(_reload_on_worker, args=(weights,))
    finally:
        reload_log.setLevel(level)
    llm.reset_prefix_cache()  # cached KV was computed with the old weights
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ rollouts


class VLLMRolloutEngine:
    """The local engine's rollouts from a colocated vLLM engine that lives for the whole run.

    :meth:`generate` takes chat-templated token-id prompts (on-policy and IEF rows in one call: vLLM batches by
    request, so long IEF prompts pad nothing) and returns the same :class:`Rollouts` as the transformers path;
    :meth:`push_weights` copies the policy's weights in after each optimizer step.
    """

    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        tokenizer: Any,
        cfg: Any,
        *,
        eos_ids: Sequence[int],
        device_type: str = "cpu",
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.3,
        per_request_seeds: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.per_request_seeds = per_request_seeds
        self.device_type = device_type
        self.eos_ids = list(eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        t0 = time.perf_counter()
        self.llm = start_llm(
            model_dir,
            cfg,
            device_type=device_type,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self.startup_s = time.perf_counter() - t0
        self._sampling_cls = import_vllm().SamplingParams

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seed: int | None = None,
        logprobs: bool = False,
    ) -> Rollouts:
        """One response per prompt; ``temperature == 0`` is greedy.

        Sampling is seeded with ``seed`` for the whole call (torch's global RNG, restored afterwards), or, with
        ``per_request_seeds``, request i with its own generator seeded ``seed + i``. ``logprobs`` also returns
        each sampled token's log-prob under the engine (after temperature).
        """
        greedy = temperature == 0
        # per-request generators only when asked for (and never for greedy requests, which draw nothing)
        seeded = self.per_request_seeds and not greedy
        seeds = request_seeds(seed or 0, len(prompt_ids)) if seeded else [None] * len(prompt_ids)
        params = [
            self._sampling_cls(
                n=1,
                temperature=0.0 if greedy else temperature,
                top_p=1.0 if greedy else top_p,
                max_tokens=max_new_tokens,
                seed=s,
                stop_token_ids=self.eos_ids,
                logprobs=0 if logprobs else None,
                detokenize=False,  # texts are decoded below with the trainer's tokenizer
            )
            for s in seeds
        ]
        requests = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        # The engine runs in this process and samples from torch's default generators: seed them for this call
        # and give the caller its RNG state back (fork_rng), so the trainer's own draws are untouched.
        cuda = list(range(torch.cuda.device_count())) if self.device_type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed((seed or 0) % _SEED_MOD)
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        if len(outputs) != len(prompt_ids):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompt_ids)} prompts")
        rows = [list(o.outputs[0].token_ids) for o in outputs]
        width = max(1, max(len(r) for r in rows))
        response = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            response[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask = response_mask_from(response, self.eos_ids)
        for i, r in enumerate(rows):
            mask[i, len(r) :] = 0
        response = torch.where(mask.bool(), response, torch.full_like(response, self.pad_id))
        lp = None
        if logprobs:
            lp = torch.zeros((len(rows), width), dtype=torch.float32)
            for i, o in enumerate(outputs):
                out = o.outputs[0]
                for j, (tok, entry) in enumerate(zip(out.token_ids, out.logprobs or [], strict=False)):
                    lp[i, j] = float(entry[tok].logprob)
            lp = lp * mask
        texts = self.tokenizer.batch_decode(
            [row[m.bool()].tolist() for row, m in zip(response, mask, strict=True)], skip_special_tokens=True
        )
        return Rollouts(
            response_ids=response,
            response_mask=mask,
            texts=texts,
            prefill_tokens=sum(len(p) for p in prompt_ids),
            gen_tokens=int(mask.sum()),
            logprobs=lp,
        )

    def push_weights(self, model: torch.nn.Module) -> float:
        """Copy the policy's current weights into the engine in place; returns the seconds it took."""
        return push_weights(self.llm, model)

    def close(self) -> None:
        """Stop the engine and free its memory."""
        llm, self.llm = self.llm, None
        shutdown_llm(llm)
