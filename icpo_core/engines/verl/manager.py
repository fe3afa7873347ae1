"""``ICPOAgentLoopManager``: verl's agent-loop manager with Implicit Expert Forcing around generation.

Selected by ``actor_rollout_ref.rollout.agent.agent_loop_manager_class`` (set in config/icpo_trainer.yaml).
verl's trainer hands it B * N_on rows (``rollout.n = N_on``); it generates those plus B * N_off IEF rows from
demo-conditioned prompts, lets the streamed reward loop score all of them, then applies ERRS, the replacement,
the expert bonus and the prompt restore (:mod:`.batch_ops`) and returns B * N_on rows with the ``icpo_ief``
flag. Validation batches and GRPO runs (``icpo.n_off: 0``) pass straight through, with reward metrics.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from verl import DataProto
from verl.experimental.agent_loop import AgentLoopManager
from verl.protocol import pad_dataproto_to_divisor, unpad_dataproto
from verl.utils.ray_utils import auto_await

from icpo_core.algorithm import DemoPool
from icpo_core.config import AlgorithmParams
from icpo_core.engines.verl.batch_ops import IEF_KEY, expand_with_ief, mix_generated, on_policy_metrics

log = logging.getLogger(__name__)


def algorithm_from_config(icpo_cfg: Any) -> AlgorithmParams:
    """The validated algorithm params from the hydra ``icpo`` block (extra launcher keys ignored)."""
    raw = dict(icpo_cfg)
    return AlgorithmParams(**{k: raw[k] for k in AlgorithmParams.model_fields if k in raw})


class ICPOAgentLoopManager(AgentLoopManager):
    """Paper section 3 steps 1-4 (IEF, ERRS, RS) inside verl's rollout; GRPO when ``n_off == 0``."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self._setup_icpo(config)

    def _setup_icpo(self, config) -> None:
        icpo = config.get("icpo", {}) or {}
        self.algo = algorithm_from_config(icpo)
        self.prompt_suffix = str(icpo.get("prompt_suffix", "") or "")
        self.seed = int(icpo.get("seed", 0) or 0)
        self.total_steps = int(config.trainer.total_training_steps or 0) or int(
            config.actor_rollout_ref.actor.optim.total_training_steps
        )
        n_on = int(config.actor_rollout_ref.rollout.n)
        if n_on != self.algo.n_on:
            raise ValueError(f"rollout.n ({n_on}) must equal icpo.n_on ({self.algo.n_on})")
        self.pool: DemoPool | None = None
        if self.algo.n_off > 0 and not self.algo.released_demos_skip_generation:
            self.pool = DemoPool.from_parquet(icpo["demo_path"])
        self.last_metrics: dict[str, float] = {}

    async def _generate(self, batch: DataProto) -> DataProto:
        """The stock manager on ``batch`` (padded to a multiple of the agent-loop workers)."""
        padded, pad = pad_dataproto_to_divisor(batch, len(self.agent_loop_workers))
        out = await AgentLoopManager.generate_sequences(self, padded)
        return unpad_dataproto(out, pad)

    @auto_await
    async def generate_sequences(self, prompts: DataProto) -> DataProto:
        """B * N_on rows in, B * N_on rows out (IEF rows mixed in and flagged ``icpo_ief``); see module doc."""
        if prompts.meta_info.get("validate", False):
            return await AgentLoopManager.generate_sequences(self, prompts)
        step = int(prompts.meta_info.get("global_steps", 1))
        rng = np.random.default_rng([self.seed, step])
        uids = np.asarray(prompts.non_tensor_batch["uid"])
        if self.algo.n_off == 0:
            out = await self._generate(prompts)
            if "rm_scores" in out.batch.keys():  # noqa: SIM118
                self.last_metrics = on_policy_metrics(uids, out, self.algo, step, self.total_steps)
            return out
        extended, src = expand_with_ief(prompts, self.algo, self.pool, self.prompt_suffix, rng)
        out = await self._generate(extended)
        if "rm_scores" not in out.batch.keys():  # noqa: SIM118
            raise RuntimeError(
                "ICPO needs rewards streamed with generation (rm_scores) for ERRS; a reward model colocated with "
                "the actor scores only after generation: use a rule-based reward or give the reward model its "
                "own resource pool"
            )
        final, metrics = mix_generated(uids, out, src, self.algo, step, self.total_steps, rng)
        self.last_metrics = metrics
        log.info("ICPO step %d: %d/%d IEF rows accepted", step, metrics["icpo/ief_accepted"], len(src))
        assert IEF_KEY in final.batch.keys()  # noqa: SIM118
        return final
