"""The vLLM set-up shared by the local engine and the bench (no vLLM start here): the environment comes from
params, the dtype from the device."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

from icpo_core.config import VllmParams
from icpo_core.rollout import vllm_engine as ve


def test_the_module_imports_neither_torch_nor_vllm():
    """The bench and the verl CPU rollout import it at module top."""
    code = "import sys, icpo_core.rollout.vllm_engine; print(sorted({'torch', 'vllm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_vllm_env_comes_from_params_not_the_shell(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "40")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")
    env = ve.configure_env(VllmParams(kv_cache_gib=3, threads_bind="0-1"), "cpu")
    assert env == {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": "3",
        "VLLM_CPU_OMP_THREADS_BIND": "0-1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
    assert all(os.environ[k] == v for k, v in env.items())
    assert "VLLM_CPU_KVCACHE_SPACE" not in ve.configure_env(VllmParams(), "cuda")


def test_auto_dtype_is_bf16_only_where_the_cpu_has_bf16_instructions():
    avx512_only = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n"
    assert ve.resolve_dtype("auto", "cpu", avx512_only) == "float32"
    assert ve.resolve_dtype("auto", "cpu", avx512_only + "flags : avx512_bf16\n") == "bfloat16"
    assert ve.resolve_dtype("auto", "cpu", "flags : amx_bf16 amx_tile\n") == "bfloat16"
    assert ve.resolve_dtype("auto", "cuda", avx512_only) == "bfloat16"
    # an explicit dtype is never second-guessed
    assert ve.resolve_dtype("float32", "cpu", "flags : avx512_bf16\n") == "float32"
    assert ve.resolve_dtype("bfloat16", "cpu", avx512_only) == "bfloat16"


def test_repack_lm_head_reruns_the_heads_post_load_step_and_skips_a_model_without_one():
    done = []
    method = SimpleNamespace(process_weights_after_loading=done.append)
    head = SimpleNamespace(quant_method=method)
    ve.repack_lm_head(SimpleNamespace(lm_head=head))
    assert done == [head]
    ve.repack_lm_head(SimpleNamespace())  # no LM head (or no packed copy, as on CUDA): nothing to do
    ve.repack_lm_head(SimpleNamespace(lm_head=SimpleNamespace(quant_method=None)))
    assert done == [head]
