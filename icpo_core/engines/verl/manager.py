"""``ICPOAgentLoopManager``: verl's agent-loop manager with Implicit Expert Forcing around generation.

Selected by ``actor_rollout_ref.rollout.agent.agent_loop_manager_class`` (set in config/icpo_trainer.yaml).
verl's trainer hands it B * N_on rows (``rollout.n = N_on``); it generates those plus B * N_off IEF rows from
demo-conditioned prompts, lets the streamed reward loop score all of them, then applies ERRS, the replacement,
the expert bonus and the prompt restore (:mod:`.batch_ops`) and returns B * N_on rows with the ``icpo_ief``
flag. Validation batches and GRPO runs (``icpo.n_off: 0``) pass straight through, with reward metrics. What an
off-policy row is prompted with is the source's (:mod:`icpo_core.algorithm.variants`): [D; q] for ``ief``, the
plain q for ``ief_no_demos``.

LUFFY (``icpo.off_policy: expert_trace``, the source whose off-policy rows the data supplies): vLLM is asked for only ``n_on - n_off`` samples per prompt (the first
rows of each group; generating N_on and dropping N_off would spend N_off of every N_on samples, 1 in 8 at the
paper's sizes, on rollouts LUFFY never trains), the other ``n_off`` slots get the row's expert trace (the ``target`` column, tokenised once
with the policy's chat template, graded once by the training verifier: :class:`.expert_traces.TraceBook`), flagged
``icpo_ief`` like IEF rows so the loss shapes their tokens with f(p) = p / (p + gamma).

Reward controls (``icpo.reward: shuffled | random | format``): after the rewards are streamed and before the step's plan,
:func:`.batch_ops.apply_reward_control` replaces them, with the local engine's generator
(:func:`icpo_core.algorithm.control_rewards.control_rng` of ``icpo.seed`` and the 1-based step) drawn over the
step's trajectories in the local engine's order (prompt by prompt: on-policy rows, then off-policy rows). The
i-th trajectory of a step therefore gets the same coin flip on both engines; which prompt it belongs to follows
each engine's own data order.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
from verl import DataProto
from verl.experimental.agent_loop import AgentLoopManager
from verl.protocol import pad_dataproto_to_divisor, unpad_dataproto
from verl.utils.ray_utils import auto_await

from icpo_core.algorithm import DemoPool, OffPolicySource, off_policy_source, reward_variant
from icpo_core.algorithm.batch_keys import IEF_KEY
from icpo_core.algorithm.control_rewards import control_rng
from icpo_core.engines.verl.batch_ops import (
    apply_reward_control,
    expand_with_ief,
    expert_trace_rows,
    insert_expert_traces,
    mix_generated,
    on_policy_metrics,
    plan_expert_traces,
    trace_metrics,
)
from icpo_core.engines.verl.expert_traces import TraceBook
from icpo_core.engines.verl.icpo_block import algorithm_from_config
from icpo_core.engines.verl.reward import compute_score

log = logging.getLogger(__name__)


class ICPOAgentLoopManager(AgentLoopManager):
    """Paper section 3 steps 1-4 (IEF, ERRS, RS) inside verl's rollout; GRPO when ``n_off == 0``."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self._setup_icpo(config)

    def _setup_icpo(self, config, tokenizer: Any = None, score_fn: Any = None) -> None:
        """The ``icpo`` block's state. ``tokenizer`` (default: the policy's, loaded when first needed: LUFFY's
        traces, the format control) and ``score_fn`` (default: the training verifier of :mod:`.reward`, for
        the traces) can be given (tests)."""
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
        self.source: OffPolicySource = off_policy_source(self.algo)
        self.pool: DemoPool | None = None
        if self.source.with_demos:
            self.pool = DemoPool.from_parquet(icpo["demo_path"])
        self._tokenizer = tokenizer
        self._score_fn = score_fn
        self._traces: TraceBook | None = None
        self._model_cfg = config.actor_rollout_ref.get("model", {}) or {}
        self.response_length = int(
            config.actor_rollout_ref.rollout.get("response_length", 0)
            or config.get("data", {}).get("max_response_length", 0)
            or 0
        )
        self.last_metrics: dict[str, float] = {}

    @property
    def policy_tokenizer(self) -> Any:
        """The policy's tokenizer (its chat template included), as the agent loop renders prompts with it."""
        if self._tokenizer is None:
            from verl.utils import hf_tokenizer

            tok = hf_tokenizer(
                str(self._model_cfg["path"]),
                trust_remote_code=bool(self._model_cfg.get("trust_remote_code", False)),
            )
            template = self._model_cfg.get("custom_chat_template")
            if template:
                tok.chat_template = template
            self._tokenizer = tok
        return self._tokenizer

    @property
    def trace_book(self) -> TraceBook:
        if self._traces is None:
            score_fn = self._score_fn
            if score_fn is None:  # the training verifier, with the run's think-block rule
                score_fn = functools.partial(compute_score, think_format=self.algo.think_format)
            if self.response_length <= 0:
                raise ValueError("LUFFY on verl needs actor_rollout_ref.rollout.response_length")
            self._traces = TraceBook(self.policy_tokenizer, self.response_length, score_fn)
        return self._traces

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
        if self.source.supplied_off_per_prompt(self.algo):
            return await self._generate_with_traces(prompts, uids, step)
        if not self.source.generated_off_per_prompt(self.algo):
            out = await self._generate(prompts)
            if reward_variant(self.algo).control:
                _require_scores(out, "a reward control")
            control = self._control(out, uids, [False] * len(uids), step)
            if "rm_scores" in out.batch.keys():  # noqa: SIM118
                self.last_metrics = {
                    **on_policy_metrics(uids, out, self.algo, step, self.total_steps),
                    **control,
                }
            return out
        extended, src = expand_with_ief(prompts, self.algo, self.source, self.pool, self.prompt_suffix, rng)
        out = await self._generate(extended)
        _require_scores(out, "ICPO's ERRS")
        control = self._control(
            out, np.concatenate([uids, uids[src]]), [False] * len(uids) + [True] * len(src), step
        )
        final, metrics = mix_generated(uids, out, src, self.algo, step, self.total_steps, rng)
        self.last_metrics = {**metrics, **control}
        log.info("ICPO step %d: %d/%d IEF rows accepted", step, metrics["icpo/ief_accepted"], len(src))
        assert IEF_KEY in final.batch.keys()  # noqa: SIM118
        return final

    def _control(
        self, out: DataProto, uids: np.ndarray, off_policy: list[bool], step: int
    ) -> dict[str, float]:
        """The reward control of the run on ``out``'s rows (nothing for ``reward: verifier``)."""
        variant = reward_variant(self.algo)
        if not variant.control:
            return {}
        tok = self.policy_tokenizer if variant.needs_text else None
        return apply_reward_control(out, uids, off_policy, self.algo, control_rng(self.seed, step), tok)

    async def _generate_with_traces(self, prompts: DataProto, uids: np.ndarray, step: int) -> DataProto:
        """LUFFY: ``n_on - n_off`` rollouts per group from vLLM, the ``n_off`` expert-trace rows built here."""
        generated, slots = expert_trace_rows(uids, self.algo)
        out = await self._generate(prompts.select_idxs(generated))
        _require_scores(out, "LUFFY")
        nt = prompts.non_tensor_batch
        if "target" not in nt:
            raise ValueError(
                "off_policy: expert_trace (LUFFY) needs the training parquet's `target` column in the batch"
            )
        traces, rewards = [], []
        for s in slots:
            trace, reward = self.trace_book.get(
                nt["raw_prompt"][s],
                nt["target"][s],
                nt["reward_model"][s]["ground_truth"],
                nt["data_source"][s] if "data_source" in nt else None,
                nt["extra_info"][s] if "extra_info" in nt else None,
            )
            traces.append(trace)
            rewards.append(reward)
        pad = self.policy_tokenizer.pad_token_id
        pad = self.policy_tokenizer.eos_token_id if pad is None else pad
        final = insert_expert_traces(uids, out, generated, slots, traces, rewards, int(pad))
        control = self._control(final, uids, final.batch[IEF_KEY].bool().tolist(), step)
        metrics = plan_expert_traces(uids, final, self.algo, step, self.total_steps)
        self.last_metrics = {**metrics, **control, **trace_metrics(traces)}
        log.info("LUFFY step %d: %d rollouts, %d expert traces", step, len(generated), len(slots))
        return final


def _require_scores(out: DataProto, what: str) -> None:
    if "rm_scores" not in out.batch.keys():  # noqa: SIM118
        raise RuntimeError(
            f"{what} needs rewards streamed with generation (rm_scores); a reward model colocated with the actor "
            "scores only after generation: use a rule-based reward or give the reward model its own resource pool"
        )
