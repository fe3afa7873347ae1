"""The local engine's training step: GRPO / ICPO with torch + transformers on CPU or one CUDA device (`train.autocast`).

One step (t = 1 .. T, verl's 1-based ``global_steps``):

1. take ``prompts_per_step`` prompts from the seeded epoch order (the position is resumable state);
2. roll out ``n_on`` on-policy samples per prompt from the plain prompt and ``n_off`` IEF samples from the prompt
   with k demos in front (:func:`build_ief_messages`; the plain prompt for ``off_policy: ief_no_demos``),
   all in one batched ``generate`` call;
3. grade every response (binary reward, :class:`icpo_core.grading.Grader`);
4. :func:`plan_step` (ERRS + replacement per prompt, the expert bonus on accepted IEF rows when
   ``reward_shaping``, the step's group metrics; the same plan verl's manager uses), then
   :func:`group_advantages` over the mixed groups (each: kept on-policy rows, then accepted IEF rows);
5. reference log-probs (frozen base model, if ``use_kl_loss``; with ``train.lora`` the policy itself with its
   adapters disabled, no second copy) and old log-probs (policy before the update; only
   when a step has several mini-batches, else the detached current ones are identical, as in verl), all on the
   PLAIN prompt: IEF rows are trained as answers to q alone;
6. for each mini-batch of ``ppo_mini_batch_prompts`` prompts: micro-batches of ``micro_batch_size`` rows,
   :func:`compute_actor_loss` normalised by :func:`micro_batch_normalisation` (one token-mean over the
   mini-batch; per micro-batch with ``released_loss_agg``), gradients accumulated, clipped, AdamW.

With ``train.lora.enabled`` the policy is a peft model (:mod:`.lora`): only the adapters are optimised and
checkpointed; the rollout engine generates from it (hf) or receives its merged weights (vllm).

The method's maths is entirely in :mod:`icpo_core.algorithm`; this module only moves tensors. GRPO is n_off 0.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from icpo_core import paths
from icpo_core.algorithm import (
    DemoPool,
    OffPolicySource,
    build_ief_prompt,
    off_policy_source,
    reward_variant,
    step_seed,
    training_rewards,
)
from icpo_core.algorithm.actor_metrics import ratio_metrics, token_metric_sums
from icpo_core.algorithm.advantages import group_advantages
from icpo_core.algorithm.control_rewards import control_rng
from icpo_core.algorithm.losses import (
    compute_actor_loss,
    effective_entropy_coeff,
    entropy_from_logits,
    micro_batch_normalisation,
)
from icpo_core.algorithm.seeding import MIXING_STREAM, SAMPLING_STREAM
from icpo_core.config import AlgorithmParams, Params
from icpo_core.data.expert_traces import ExpertTrace, expert_trace
from icpo_core.engines.local import lora
from icpo_core.engines.local.data import PromptRow, chat_ids, load_demo_pool, load_prompts, take
from icpo_core.engines.local.logprobs import (
    batched_log_probs,
    build_sequences,
    response_logits,
    token_log_probs,
)
from icpo_core.engines.local.rollout import RolloutEngine, make_rollout_engine
from icpo_core.engines.local.step_batch import StepBatch, autocast_dtype, pick_device, plan_local_step
from icpo_core.errors import DataError
from icpo_core.grading import Grader

log = logging.getLogger(__name__)

RewardFn = Callable[[Sequence[str], Sequence[str]], list[float]]

# Per-step token counts summed into the run's compute accounting (train summary, MLflow compute/*, the report):
# generated tokens, prompt tokens prefilled (ICPO's demos lengthen them), expert-trace tokens (LUFFY) and the
# tokens the trainer's forward / backward passes see.
COMPUTE_KEYS = ("gen_tokens", "prefill_tokens", "expert_tokens", "train_tokens")

# Loss terms that compute_actor_loss normalises by the mini-batch's token count: their micro-batch values add up.
_ADDITIVE = ("actor/pg_loss", "actor/kl", "actor/entropy")


# ------------------------------------------------------------------------------------------------ stepper


class LocalStepper:
    """One run's model, optimizer, data and rollout engine, and its training step (module docstring).

    :class:`~icpo_core.engines.local.trainer.LocalTrainer` adds the resumable run around it."""

    def __init__(
        self,
        params: Params,
        run: str,
        *,
        root: str | Path = ".",
        reward_fn: RewardFn | None = None,
        progress: bool = True,
        instance: str | None = None,
    ):
        self.params = params
        self.run = run
        # the study instance <run>_s<seed> names every output; the run name picks the algorithm
        self.instance = instance
        self.name = instance or run
        self.root = Path(root)
        self.algo: AlgorithmParams = params.run_algorithm(run)
        self.train_cfg = params.train
        self.reward_fn = reward_fn
        self.progress = progress
        self.device = pick_device(params)
        self.autocast = autocast_dtype(self.train_cfg.autocast, self.device)
        self.ckpt_root = self.root / paths.checkpoints_dir(self.name)
        self.steps_path = self.root / paths.train_metrics_jsonl(self.name)
        self.summary_path = self.root / paths.train_summary(self.name)
        self.rollout_engine: RolloutEngine | None = None  # train.rollout_backend, started once per run
        self.rollout_backend_used: str | None = None  # what actually generated (vllm may fall back to hf)
        self._grader: Grader | None = None  # math-verify workers (train() starts them; setup(grader=) shares)
        self.data_pos = 0  # position in the seeded epoch order (resumable state)

    # -------------------------------------------------------------------------------------- setup
    def setup(
        self, *, grader: Grader | None = None, rollout_engine: RolloutEngine | None = None
    ) -> LocalStepper:
        """Load what a step needs (base model, tokenizer, optimizer, prompts, demo pool); returns the trainer.

        After it :meth:`train_step` / :meth:`rollout_step` / :meth:`update` can be called directly (benchmark
        scripts, tests), from data position 0. ``grader``: a started :class:`Grader` to grade with (else
        :meth:`train` starts one from ``train.grade_workers`` / ``train.grade_timeout_s``; a ``reward_fn`` needs
        none); ``rollout_engine``: an engine already running (else ``train.rollout_backend`` starts on first use).
        """
        self._load()
        self.data_pos = 0
        if grader is not None:
            self._grader = grader
        if rollout_engine is not None:
            self.rollout_engine = rollout_engine
            self.rollout_backend_used = rollout_engine.name
        return self

    def _load(self) -> None:
        model_dir = self.root / paths.BASE_MODEL_DIR
        if not (model_dir / "config.json").is_file():
            raise DataError(
                f"{model_dir}: base model not found; run `icpo base-model` (dvc repro base_model)"
            )
        torch.manual_seed(self.params.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(self.device)
        self.ref_model = None  # LoRA: the reference is self.model with its adapters off (reference_model)
        if self.train_cfg.lora.enabled:
            self.model = lora.wrap(self.model, self.train_cfg.lora, seed=self.params.seed)
        elif self.algo.use_kl_loss:
            self.ref_model = copy.deepcopy(self.model).eval()
            self.ref_model.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            lora.trainable_parameters(self.model),
            lr=self.train_cfg.lr,
            weight_decay=self.train_cfg.weight_decay,
        )
        self.prompts = load_prompts(
            self.root / paths.TRAIN_PARQUET,
            self.tokenizer,
            self.train_cfg.max_prompt_length,
            self.params.train_prompt_suffix,
        )
        self.traces: dict[tuple[int, ...], ExpertTrace] = {}
        if self.source.supplied_off_per_prompt(self.algo):
            self._load_expert_traces()
        self.demos: DemoPool | None = None
        if self.source.with_demos:
            self.demos = load_demo_pool(self.root / paths.DEMOS_PARQUET, self.algo.k_demos)

    def _load_expert_traces(self) -> None:
        """LUFFY: every prompt's expert trace, tokenised once (:func:`expert_trace`); prompts without a ``target``
        are dropped and counted, traces longer than ``max_response_length`` truncated and counted (as LUFFY)."""
        kept, missing, truncated = [], 0, 0
        for row in self.prompts:
            trace = expert_trace(self.tokenizer, row.messages, row.target, self.train_cfg.max_response_length)
            if trace is None:
                missing += 1
                continue
            truncated += int(trace.truncated)
            self.traces[row.prompt_ids] = trace
            kept.append(row)
        path = self.root / paths.TRAIN_PARQUET
        if not kept:
            raise DataError(
                f"{path}: no row has a `target` (expert solution), which off_policy: expert_trace (LUFFY) trains on; "
                "use a source with solutions (synthetic, openr1_46k, openr1_220k) or add a target column"
            )
        if missing or truncated:
            log.warning(
                "%s: LUFFY expert traces: %d rows without a target dropped, %d of %d traces longer than "
                "max_response_length=%d truncated",
                path,
                missing,
                truncated,
                len(kept),
                self.train_cfg.max_response_length,
            )
        self.prompts = kept

    def start_rollout_engine(self) -> RolloutEngine:
        """The run's rollout engine (``train.rollout_backend``), started once after :meth:`setup`.

        A vLLM engine starts from models/base, so the current weights are pushed right away when they differ
        (a resumed run); ``vllm`` that cannot start falls back to ``hf`` with one warning.
        """
        if self.rollout_engine is None:
            self.rollout_engine = make_rollout_engine(
                self.train_cfg.rollout_backend,
                self.model,
                self.tokenizer,
                model_dir=self.root / paths.BASE_MODEL_DIR,
                vllm_cfg=self.train_cfg.vllm,
                device=self.device,
                seed=self.params.seed,
                autocast_dtype=self.autocast,
            )
            self.rollout_backend_used = self.rollout_engine.name
        return self.rollout_engine

    def reference_model(self) -> contextlib.AbstractContextManager[Any]:
        """The frozen reference policy for the block: the base copy, or the LoRA policy with adapters off."""
        if self.ref_model is not None:
            return contextlib.nullcontext(self.ref_model)
        return lora.reference(self.model)

    def _rewards(self, texts: Sequence[str], golds: Sequence[str]) -> list[float]:
        if self.reward_fn is not None:
            return [float(r) for r in self.reward_fn(texts, golds)]
        if self._grader is None:
            raise RuntimeError(
                "no grader: call setup(grader=...) (or train()) before a step without reward_fn"
            )
        verdicts = self._grader.grade(list(texts), list(golds), think_format=self.algo.think_format)
        return [v.reward for v in verdicts]

    # -------------------------------------------------------------------------------------- one step
    @property
    def source(self) -> OffPolicySource:
        """The run's off-policy source (:mod:`icpo_core.algorithm.variants`)."""
        return off_policy_source(self.algo)

    def generation_prompts(self, rows: list[PromptRow], rng: np.random.Generator) -> list[Sequence[int]]:
        """Token ids to generate from, prompt-major: the source's on-policy rollouts of the plain prompt, then
        its generated off-policy rows, each prompted as :meth:`OffPolicySource.draw_demos` says ([D; q], or q).

        ``demo_format: released`` is the released code's raw string (:func:`build_ief_prompt`), tokenized
        without a chat template and without special tokens, as the released code did.
        """
        a, source = self.algo, self.source
        out: list[Sequence[int]] = []
        for row in rows:
            out.extend([row.prompt_ids] * source.rollouts_per_prompt(a))
            for _ in range(source.generated_off_per_prompt(a)):
                demos = source.draw_demos(a, self.demos, rng, row.question)
                if demos is None:  # the plain prompt q
                    out.append(row.prompt_ids)
                    continue
                prompt = build_ief_prompt(
                    row.messages, demos, a.demo_format, row.suffix, question=row.question
                )
                if isinstance(prompt, str):
                    out.append(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
                else:
                    out.append(chat_ids(self.tokenizer, prompt))
        return out

    def rollout_step(self, step: int, rows: list[PromptRow]) -> tuple[StepBatch, dict[str, float]]:
        """Steps 2-5 of the module docstring: generate, grade, mix, advantages, old/ref log-probs."""
        a, tc = self.algo, self.train_cfg
        rng = np.random.default_rng(step_seed(self.params.seed, step, MIXING_STREAM))
        gen_prompts = self.generation_prompts(rows, rng)
        t0 = time.perf_counter()
        roll = self.start_rollout_engine().generate(
            gen_prompts,
            max_new_tokens=tc.max_response_length,
            temperature=tc.temperature,
            top_p=tc.top_p,
            seed=step_seed(self.params.seed, step, SAMPLING_STREAM),
        )
        t_gen = time.perf_counter() - t0
        resp_ids, resp_mask, texts, n_truncated = self._with_expert_traces(roll, rows)
        per = len(texts) // len(rows)
        t0 = time.perf_counter()
        verifier = self._rewards(texts, [r.gold for r in rows for _ in range(per)])
        rewards = training_rewards(a, verifier, texts, control_rng(self.params.seed, step))
        t_reward = time.perf_counter() - t0

        plan = plan_local_step(rewards, len(rows), a, step=step, total_steps=tc.steps, rng=rng)
        trained_rows, trained_rewards = plan.rollout_rows, plan.rewards
        is_ief, prompt_of_row = plan.off_policy, plan.prompt_of_row
        reward_t = torch.tensor(trained_rewards, dtype=torch.float32)
        adv = group_advantages(reward_t, prompt_of_row, eps=a.adv_eps, norm_by_std=a.norm_adv_by_std)
        seqs = build_sequences(
            [rows[p].prompt_ids for p in prompt_of_row],  # PLAIN prompt, also for IEF rows
            [resp_ids[r] for r in trained_rows],
            [resp_mask[r] for r in trained_rows],
            self.tokenizer.pad_token_id,
        )
        batch = StepBatch(
            seqs=seqs,
            advantages=adv,
            ief_mask=torch.tensor(is_ief, dtype=torch.bool),
            prompt_of_row=prompt_of_row,
        )
        t0 = time.perf_counter()
        if a.use_kl_loss:
            with self.reference_model() as ref:
                batch.ref_log_prob = batched_log_probs(
                    ref, seqs, tc.micro_batch_size, tc.temperature, self.autocast
                )
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self._n_minibatches(len(rows)) > 1:
            batch.old_log_prob = batched_log_probs(
                self.model, seqs, tc.micro_batch_size, tc.temperature, self.autocast
            )
        t_old = time.perf_counter() - t0

        lengths = seqs.response_mask.sum(-1).float()
        metrics = {
            **plan.metrics,
            "adv/mean": float(adv.mean()),
            "adv/std": float(adv.std()) if adv.numel() > 1 else 0.0,
            "adv/abs_max": float(adv.abs().max()),
            "response/length_mean": float(lengths.mean()),
            "response/clip_ratio": float((lengths >= tc.max_response_length).float().mean()),
            "perf/gen_tokens": float(roll.gen_tokens),
            "perf/prefill_tokens": float(roll.prefill_tokens),
            "perf/train_tokens": float(seqs.attention_mask.sum()),
            "timing/gen_s": t_gen,
            "timing/reward_s": t_reward,
            "timing/ref_s": t_ref,
            "timing/old_s": t_old,
        }
        if self.source.supplied_off_per_prompt(a):
            metrics["luffy/trace_truncated"] = float(n_truncated)
            metrics["perf/expert_tokens"] = float(sum(len(t) for t in resp_ids) - roll.gen_tokens)
        if reward_variant(a).control:  # what the verifier would have said, for the curves
            n_on = self.source.rollouts_per_prompt(a)
            on = [verifier[i * per + j] for i in range(len(rows)) for j in range(n_on)]
            metrics["reward/verifier_on_policy"] = float(np.mean(on))
        return batch, metrics

    def _with_expert_traces(
        self, roll: Any, rows: list[PromptRow]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str], int]:
        """The step's responses per prompt (ids, mask, text): the rollouts, then for LUFFY each prompt's
        ``n_off`` copies of its expert trace (:func:`expert_trace`, tokenised once at load). Returns the number
        of truncated traces used."""
        ids = [roll.response_ids[i] for i in range(len(roll.texts))]
        masks = [roll.response_mask[i] for i in range(len(roll.texts))]
        n_off = self.source.supplied_off_per_prompt(self.algo)
        if not n_off:
            return ids, masks, list(roll.texts), 0
        n_on = self.source.rollouts_per_prompt(self.algo)
        out_ids, out_masks, out_texts, truncated = [], [], [], 0
        for i, row in enumerate(rows):
            span = slice(i * n_on, (i + 1) * n_on)
            out_ids += ids[span]
            out_masks += masks[span]
            out_texts += roll.texts[span]
            trace = self.traces[row.prompt_ids]
            t = torch.tensor(trace.ids, dtype=torch.long)
            out_ids += [t] * n_off
            out_masks += [torch.ones_like(t)] * n_off
            out_texts += [trace.text] * n_off
            truncated += n_off * int(trace.truncated)
        return out_ids, out_masks, out_texts, truncated

    def _n_minibatches(self, n_prompts: int) -> int:
        return max(1, n_prompts // self.train_cfg.ppo_mini_batch_prompts)

    def update(self, batch: StepBatch) -> dict[str, float]:
        """Step 6: one pass over the mini-batches with gradient accumulation; returns actor metrics."""
        tc, a = self.train_cfg, self.algo
        need_entropy_grad = effective_entropy_coeff(a) > 0
        n_prompts = max(batch.prompt_of_row) + 1
        per_mini = tc.ppo_mini_batch_prompts
        self.model.train()
        totals: dict[str, float] = {}
        weighted: dict[str, float] = {}
        ratio_sums: dict[str, float] = {}  # token_metric_sums over the whole update (actor_metrics)
        n_mini = 0
        grad_norms = []
        for first_prompt in range(0, n_prompts, per_mini):
            rows = [
                i for i, p in enumerate(batch.prompt_of_row) if first_prompt <= p < first_prompt + per_mini
            ]
            if not rows:
                continue
            lo, hi = rows[0], rows[-1] + 1  # prompt-major rows: a mini-batch is a contiguous slice
            mini_tokens = int(batch.seqs.response_mask[lo:hi].sum())
            mini_sums: dict[str, float] = {}
            mini_w: dict[str, float] = {}
            self.optimizer.zero_grad(set_to_none=True)
            for s in range(lo, hi, tc.micro_batch_size):
                e = min(s + tc.micro_batch_size, hi)
                mb = batch.seqs.rows(s, e).to(self.device)
                width = mb.response_width
                with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    logits = response_logits(self.model, mb, tc.temperature)
                log_prob = token_log_probs(logits, mb.response_ids)
                if need_entropy_grad:
                    entropy = entropy_from_logits(logits)
                else:
                    with torch.no_grad():
                        entropy = entropy_from_logits(logits)
                del logits

                def cut(
                    x: torch.Tensor | None, s: int = s, e: int = e, width: int = width
                ) -> torch.Tensor | None:
                    return None if x is None else x[s:e, :width].to(self.device)

                old = cut(batch.old_log_prob)
                num_tokens, scale = micro_batch_normalisation(
                    a.loss_agg_mode,
                    released_loss_agg=a.released_loss_agg,
                    micro_rows=e - s,
                    mini_rows=hi - lo,
                    mini_tokens=mini_tokens,
                )
                loss, m = compute_actor_loss(
                    log_prob,
                    log_prob.detach() if old is None else old,
                    cut(batch.ref_log_prob),
                    entropy,
                    batch.advantages[s:e].to(self.device),
                    mb.response_mask,
                    batch.ief_mask[s:e].to(self.device),
                    a,
                    batch_num_tokens=num_tokens,
                )
                (loss * scale).backward()
                sums = token_metric_sums(
                    log_prob.detach(),
                    log_prob.detach() if old is None else old,
                    batch.advantages[s:e].to(self.device),
                    mb.response_mask,
                    batch.ief_mask[s:e].to(self.device),
                    clip_ratio_low=a.clip_ratio_low,
                    clip_ratio_high=a.clip_ratio_high,
                    clip_ratio_c=a.clip_ratio_c,
                )
                for k, v in sums.items():
                    ratio_sums[k] = ratio_sums.get(k, 0.0) + v
                n_tok = float(mb.response_mask.sum())
                for k, v in m.items():
                    if k in _ADDITIVE:
                        mini_sums[k] = mini_sums.get(k, 0.0) + v * scale
                    else:
                        mini_sums[k] = mini_sums.get(k, 0.0) + v * n_tok
                        mini_w[k] = mini_w.get(k, 0.0) + n_tok
            grad_norm = torch.nn.utils.clip_grad_norm_(lora.trainable_parameters(self.model), tc.grad_clip)
            if torch.isfinite(grad_norm):
                self.optimizer.step()
            else:
                log.warning("non-finite gradient norm %s: optimizer step skipped", float(grad_norm))
            self.optimizer.zero_grad(set_to_none=True)
            grad_norms.append(float(grad_norm))
            for k, v in mini_sums.items():
                val = v / mini_w[k] if k in mini_w and mini_w[k] else v
                totals[k] = totals.get(k, 0.0) + val
                weighted[k] = weighted.get(k, 0.0) + 1
            n_mini += 1
        out = {k: totals[k] / weighted[k] for k in totals}
        out.update(ratio_metrics(ratio_sums))  # exact token means over the update, as verl's
        out["actor/grad_norm"] = float(np.mean(grad_norms)) if grad_norms else 0.0
        out["actor/lr"] = tc.lr
        return out

    def train_step(self, step: int) -> dict[str, float]:
        t_start = time.perf_counter()
        idx = take(len(self.prompts), self.params.seed, self.data_pos, self.train_cfg.prompts_per_step)
        rows = [self.prompts[i] for i in idx]
        batch, metrics = self.rollout_step(step, rows)
        t0 = time.perf_counter()
        metrics.update(self.update(batch))
        metrics["timing/update_s"] = time.perf_counter() - t0
        # the new weights go into the rollout engine before the next step's rollouts (hf: nothing to do)
        metrics["timing/push_s"] = self.start_rollout_engine().push_weights(self.model)
        self.data_pos += len(rows)
        elapsed = time.perf_counter() - t_start
        metrics["perf/step_time_s"] = elapsed
        metrics["perf/tokens_per_s"] = (metrics["perf/gen_tokens"] + metrics["perf/prefill_tokens"]) / elapsed
        return metrics
