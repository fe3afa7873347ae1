"""Estimates of what a run costs before it starts: GPU-hours per arm and the size of a verl checkpoint.

Both are **estimates**, stated as such wherever they are printed (params.yaml comments, docs/method.md, ``icpo
validate``):

- :func:`tokens_per_step` counts the rows a step processes (``prompts_per_step`` x (on-policy rollouts + off-policy
  rows: ICPO's IEF rollouts, LUFFY's expert traces)) at the response cap ``max_response_length``: an upper bound
  on the response tokens, prompt tokens left out. :func:`gpu_hours` divides the run's tokens by a published verl
  throughput (:data:`PUBLISHED_THROUGHPUT`), measured on a smaller batch than the paper's, so the hours are on
  the high side.
- :func:`checkpoint_bytes`: verl's FSDP checkpoint of the actor (``save_contents`` [model, optimizer, extra]):
  fp32 weights (4 bytes per parameter, the FSDP master copy) plus AdamW's two fp32 moments (8 bytes per
  trainable parameter). The parameter count comes from the base model's safetensors headers (no weights read).

No torch import: ``icpo validate`` and the launch checks stay instant.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from icpo_core.algorithm import off_policy_source
from icpo_core.config import AlgorithmParams, Params
from icpo_core.errors import DataError


@dataclass(frozen=True)
class Throughput:
    """A published verl throughput: ``tokens_per_s_per_gpu`` is verl's ``perf/throughput`` metric."""

    tokens_per_s_per_gpu: float
    source: str


# verl's own benchmark page docs/perf/truncate_padding_benchmark.md (verl-project/verl): Qwen 2.5 7B, GRPO on GSM8K,
# 1 node of 8x H100 80GB, max prompt 4096 / max response 8192, 32 prompts per step. The same page measured
# ~128 tokens/s per GPU with full padding (no flash-attn varlen packing: this project's SDPA fallback).
PUBLISHED_THROUGHPUT = Throughput(
    699.0,
    "verl docs/perf/truncate_padding_benchmark.md: Qwen 2.5 7B GRPO, 8x H100 80GB, max prompt 4096 / response "
    "8192, use_remove_padding (flash-attn), perf/throughput ~699 tokens/s per GPU",
)
PUBLISHED_THROUGHPUT_PADDED = Throughput(
    128.0,
    "the same page, full padding (no sequence packing, as without flash-attn): ~128 tokens/s per GPU",
)


def rows_per_prompt(algo: AlgorithmParams) -> int:
    """Rows one prompt costs per step: its on-policy rollouts plus its off-policy rows (generated or supplied)."""
    source = off_policy_source(algo)
    return (
        source.rollouts_per_prompt(algo)
        + source.generated_off_per_prompt(algo)
        + source.supplied_off_per_prompt(algo)
    )


def tokens_per_step(params: Params, run: str) -> int:
    """prompts x rows per prompt x the response cap (an upper bound; prompt tokens not counted)."""
    t = params.train
    return t.prompts_per_step * rows_per_prompt(params.run_algorithm(run)) * t.max_response_length


def gpu_hours(params: Params, run: str, throughput: Throughput = PUBLISHED_THROUGHPUT) -> float:
    """GPU-hours of one training run of ``run`` (one seed): its tokens over ``throughput`` (an ESTIMATE)."""
    return tokens_per_step(params, run) * params.train.steps / throughput.tokens_per_s_per_gpu / 3600.0


# ------------------------------------------------------------------------------------------ checkpoint size

FP32_BYTES = 4
ADAMW_BYTES = 8  # exp_avg + exp_avg_sq, fp32


def safetensors_parameters(model_dir: str | Path) -> int:
    """The number of parameters in ``model_dir``'s ``*.safetensors`` files, read from their JSON headers only."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise DataError(f"{model_dir}: no *.safetensors files (run the base_model stage first)")
    total = 0
    for f in files:
        with f.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise DataError(f"{f}: not a safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n > 100 * 1024**2:
                raise DataError(f"{f}: not a safetensors file (header of {n} bytes)")
            try:
                header = json.loads(fh.read(n))
            except ValueError:
                raise DataError(f"{f}: not a safetensors file (unreadable header)") from None
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info.get("shape", []):
                count *= int(dim)
            total += count
    return total


def checkpoint_bytes(n_parameters: int, lora: bool = False) -> int:
    """One verl FSDP actor checkpoint: fp32 weights, plus AdamW's moments of every weight (full fine-tuning; with
    LoRA only the adapters train, whose moments are left out) and 64 MiB for the tokenizer, config and state."""
    optimizer = 0 if lora else n_parameters * ADAMW_BYTES
    return n_parameters * FP32_BYTES + optimizer + 64 * 1024**2
