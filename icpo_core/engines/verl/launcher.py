"""``python -m icpo_core.engines.verl.launcher <hydra overrides>``: run GRPO / ICPO on verl 0.9.1.

The hydra main composes config/icpo_trainer.yaml (verl's ``ppo_trainer`` + the ``icpo`` block) and calls
verl's ``run_ppo`` with :class:`ICPOTaskRunner`, the v0 ``TaskRunner.run`` with ``RayICPOTrainer`` swapped in
(verl's own runner hard-codes ``RayPPOTrainer`` and, being ``@ray.remote``, cannot be subclassed).
``--cfg job`` prints the composed config without starting anything (the tests use it).
"""

from __future__ import annotations

import hydra
import ray
from verl.trainer.main_ppo import run_ppo
from verl.trainer.main_ppo_v0 import BaseTaskRunner

from icpo_core.engines.verl import cpu_shims
from icpo_core.engines.verl.metrics import task_runner_log_path
from icpo_core.engines.verl.trainer import RayICPOTrainer


def _cpu(config) -> bool:
    """A CPU run (``trainer.device=cpu``, set by :func:`.overrides.cpu_overrides`): not ``torch.cuda``, which
    reads False in this GPU-less Ray actor on a GPU node too."""
    return str(config.trainer.get("device", "cuda")) == "cpu"


class ICPOTaskRunner(BaseTaskRunner):
    """verl 0.9.1's ``main_ppo_v0.TaskRunner.run`` with ``RayICPOTrainer`` (pinned to that version).

    On a CPU run two of verl's task-runner steps are replaced by those of :mod:`.cpu_shims`: the actor worker
    class (gloo started by the worker) and the resource-pool manager (CPU bundles).
    """

    def add_actor_rollout_worker(self, config):
        actor_rollout_cls, ray_worker_group_cls = super().add_actor_rollout_worker(config)
        if not _cpu(config):
            return actor_rollout_cls, ray_worker_group_cls
        cpu_cls = cpu_shims.cpu_worker_class()
        for role, remote in list(self.role_worker_mapping.items()):
            if getattr(remote, "__ray_actor_class__", None) is actor_rollout_cls:
                self.role_worker_mapping[role] = ray.remote(cpu_cls)
        return cpu_cls, ray_worker_group_cls

    def init_resource_pool_mgr(self, config):
        manager = super().init_resource_pool_mgr(config)
        if not _cpu(config):
            return manager
        return cpu_shims.cpu_resource_pool_manager(manager.resource_pool_spec, manager.mapping)

    def build_trainer(self, config):
        """Everything up to (not including) ``init_workers``: workers, pools, datasets, the trainer."""
        from omegaconf import OmegaConf
        from verl.trainer.ppo.utils import (
            create_rl_dataset,
            create_rl_sampler,
            need_critic,
            need_reference_policy,
        )
        from verl.utils.config import omega_conf_to_dataclass, validate_config
        from verl.utils.dataset.rl_dataset import collate_fn

        OmegaConf.resolve(config)
        actor_rollout_cls, ray_worker_group_cls = self.add_actor_rollout_worker(config)
        self.add_critic_worker(config)
        self.add_reward_model_resource_pool(config)
        self.add_teacher_model_resource_pool(config)
        self.add_ref_policy_worker(config, actor_rollout_cls)
        validate_config(
            config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
        )
        model_config = omega_conf_to_dataclass(config.actor_rollout_ref.model)
        tokenizer, processor = model_config.tokenizer, model_config.processor
        resource_pool_manager = self.init_resource_pool_mgr(config)
        data = config.data
        train_dataset = create_rl_dataset(
            data.train_files,
            data,
            tokenizer,
            processor,
            is_train=True,
            max_samples=data.get("train_max_samples", -1),
        )
        val_dataset = create_rl_dataset(
            data.val_files,
            data,
            tokenizer,
            processor,
            is_train=False,
            max_samples=data.get("val_max_samples", -1),
        )
        return RayICPOTrainer(
            config=config,
            tokenizer=tokenizer,
            processor=processor,
            role_worker_mapping=self.role_worker_mapping,
            resource_pool_manager=resource_pool_manager,
            ray_worker_group_cls=ray_worker_group_cls,
            train_dataset=train_dataset,
            val_dataset=val_dataset,
            collate_fn=collate_fn,
            train_sampler=create_rl_sampler(data, train_dataset),
        )

    def run(self, config):
        task_runner_log_path()  # before fit() opens verl's file logger (multi-node: the env has only the dir)
        trainer = self.build_trainer(config)
        trainer.init_workers()
        trainer.fit()


@hydra.main(config_path="config", config_name="icpo_trainer", version_base=None)
def main(config) -> None:
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    if config.trainer.use_v1:
        raise ValueError("ICPO hooks verl's legacy trainer: keep trainer.use_v1=false")
    run_ppo(config, task_runner_class=ray.remote(num_cpus=1)(ICPOTaskRunner))


if __name__ == "__main__":
    main()
