"""The local engine's run: GRPO / ICPO training of one ``runs:`` entry at one seed, resumable.

:class:`LocalTrainer` wraps the step (:class:`~icpo_core.engines.local.step.LocalStepper`) in the run's
lifecycle: the config fingerprint a checkpoint must match to be resumed, the resume point, the MLflow run
(:func:`icpo_core.tracking.open_training_run`), the step log (:mod:`icpo_core.steplog`), checkpoints every
``train.save_freq`` steps (kept: ``train.keep_checkpoints``), a free-space check before each save, the run summary
with its compute accounting, and the curves. :func:`train_local` is what ``icpo train`` calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from icpo_core import checkpoint_layout as layout
from icpo_core import machine, paths, steplog, tracking
from icpo_core.algorithm import (
    StepMetrics,
)
from icpo_core.config import Params
from icpo_core.engines import resume_params as resume
from icpo_core.engines.local import checkpoint as ckpt
from icpo_core.engines.local import lora
from icpo_core.engines.local.step import COMPUTE_KEYS, LocalStepper, RewardFn
from icpo_core.engines.local.step_batch import deterministic_algorithms
from icpo_core.grading import Grader
from icpo_core.io_utils import atomic_write_json, check_free_space
from icpo_core.report.curves import plot_curves

log = logging.getLogger(__name__)


def _file_digest(path: Path, whole: bool = True) -> str:
    if not path.is_file():
        return "missing"
    if not whole:
        return f"size:{path.stat().st_size}"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def config_fingerprint(params: Params, run: str, root: Path) -> str:
    """What a checkpoint must match to be resumed: the run's config and its inputs.

    The training params enter as :func:`~icpo_core.engines.resume_params.training_params` (without the keys a
    resume may change: checkpointing, device, grading parallelism, verl). The base weights enter by size
    (hashing 0.5 GB each start is slow).
    """
    cfg = tracking.run_config(params, run)
    for key in ("algorithm", "train", "seed"):
        cfg.pop(key, None)
    cfg["training"] = resume.training_params(params, run, "local")
    cfg["inputs"] = {
        "train": _file_digest(root / paths.TRAIN_PARQUET),
        "demos": _file_digest(root / paths.DEMOS_PARQUET),
        "model_config": _file_digest(root / paths.BASE_MODEL_DIR / "config.json"),
        "model_weights": _file_digest(root / paths.BASE_MODEL_DIR / "model.safetensors", whole=False),
    }
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:20]


# ------------------------------------------------------------------------------------------------ the run


class LocalTrainer(LocalStepper):
    """Trains one run of params.yaml in-process, resumably: the step of :class:`LocalStepper` plus the run."""

    def _resume_point(self, fingerprint: str, training: dict[str, Any]) -> int | None:
        """The step to resume from (None: from scratch).

        The checkpoint's training params must equal ``training`` (params.yaml edited mid-run: a
        :class:`UserError` naming the changed keys, nothing touched); a checkpoint made before they were
        recorded resumes unchecked, with one warning. A changed input (data, base model, the data / model
        sections: the fingerprint) starts the run over and removes the old checkpoints.
        """
        latest = layout.latest_step(self.ckpt_root)
        if latest is None:
            return None
        state = ckpt.read_resume_state(self.ckpt_root, latest)
        if not resume.check_resume(
            state, training, engine="local", step=latest, ckpt_root=str(self.ckpt_root)
        ):
            log.warning(
                "%s: the checkpoint at step %d records no training params (made by an older version): resuming "
                "without checking params.yaml or the inputs against it",
                self.ckpt_root,
                latest,
            )
            return latest
        if state.get("fingerprint") != fingerprint:
            log.warning(
                "%s: the checkpoint at step %d was made with different inputs (data, base model or their params; "
                "fingerprint %s, now %s); starting %s from scratch and removing the old checkpoints",
                self.ckpt_root,
                latest,
                state.get("fingerprint"),
                fingerprint,
                self.name,
            )
            layout.clear(self.ckpt_root)
            return None
        return latest

    def _start_tracking(self, fingerprint: str, resumed: bool) -> tracking.Tracker | tracking.TrackerGroup:
        return tracking.open_training_run(
            self.params, self.run, root=self.root, instance=self.instance, fingerprint=fingerprint
        )

    def train(self, stop_after: int | None = None) -> dict[str, Any]:
        """Run (or resume) the training; ``stop_after`` ends this call after that many new steps (tests). With
        ``train.deterministic``, under torch's deterministic kernels (:func:`.step_batch.deterministic_algorithms`)."""
        with deterministic_algorithms(self.train_cfg.deterministic):
            return self._train(stop_after)

    def _train(self, stop_after: int | None) -> dict[str, Any]:
        wall0 = time.time()
        tc = self.train_cfg
        total = tc.steps
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        layout.prune(self.ckpt_root, None)  # temporaries of a killed checkpoint write
        fingerprint = config_fingerprint(self.params, self.run, self.root)
        training = resume.training_params(self.params, self.run, "local")
        start = self._resume_point(fingerprint, training)
        self.setup()
        if start is not None:
            # a finished run's last checkpoint has no optimizer state (nothing is left to train)
            optimizer = self.optimizer if start < total else None
            state = ckpt.load_checkpoint(self.ckpt_root, start, model=self.model, optimizer=optimizer)
            self.data_pos = int(state["data_pos"])
            log.info("%s: resuming from checkpoint step %d of %d", self.name, start, total)
        if (start or 0) < total:  # room for the checkpoints still to write, before any work is done
            check_free_space(
                self.ckpt_root,
                ckpt.estimate_bytes(self.model) + ckpt.estimate_bytes(self.model, with_optimizer=False),
                f"train {self.name} (its next checkpoints)",
                "free some space (`dvc gc -w` drops DVC's cached copies of old outputs) and rerun",
            )
        engine = self.start_rollout_engine()
        if start is not None:
            engine.push_weights(self.model)  # the engine started from models/base
        start = start or 0
        history = steplog.reset(self.steps_path, start if start else None)
        tracker = self._start_tracking(fingerprint, resumed=start > 0)
        if start:  # steps a kill or an outage kept from MLflow (never one it holds): every step exactly once
            tracker.replay(history, through=start)
        pending: list[tuple[int, dict[str, float]]] = []  # MLflow lags to the last checkpoint: no duplicates

        def save(step: int) -> None:
            ckpt.save_checkpoint(
                self.ckpt_root,
                step,
                model=self.model,
                optimizer=self.optimizer,
                tokenizer=self.tokenizer,
                resume_state={
                    "data_pos": self.data_pos,
                    "fingerprint": fingerprint,
                    "total_steps": total,
                    "params": training,
                    "params_hash": resume.params_hash(training),
                },
                max_to_keep=self.train_cfg.keep_checkpoints,
                # the finished run's last checkpoint: no AdamW state, the weights once as the merged model's
                final=step >= total,
            )
            tracker.log_metrics(pending)
            pending.clear()

        grader = None  # the one this call starts (and closes)
        if self.reward_fn is None and self._grader is None:
            # wait=True: the workers import math-verify now, not in the middle of the first step.
            grader = Grader(workers=tc.grade_workers, timeout_s=tc.grade_timeout_s).start(wait=True)
            self._grader = grader
        bar = tqdm(
            total=total, initial=start, desc=f"train {self.name}", unit="step", disable=not self.progress
        )
        step = start
        status = "FAILED"
        try:
            end = total if stop_after is None else min(total, start + stop_after)
            for step in range(start + 1, end + 1):
                metrics = self.train_step(step)
                history.append(steplog.append(self.steps_path, step, metrics))
                pending.append((step, metrics))
                bar.update(1)
                bar.set_postfix(
                    reward=f"{metrics[StepMetrics.REWARD_ON_POLICY]:.3f}",
                    accept=f"{metrics[StepMetrics.ACCEPT_RATE]:.2f}",
                    s_per_step=f"{metrics['perf/step_time_s']:.1f}",
                )
                if step % self.train_cfg.save_freq == 0 or step == total:
                    save(step)
            if step > start and layout.latest_step(self.ckpt_root) != step:
                save(step)  # stopped early (stop_after): keep what was done
            status = "FINISHED" if step >= total else "RUNNING"
        finally:
            bar.close()
            if grader is not None:
                grader.close()
                self._grader = None
            if self.rollout_engine is not None:
                self.rollout_engine.close()
                self.rollout_engine = None
            if status == "FAILED":
                tracker.finish("FAILED", sync_hint=self._sync_hint())
        summary = self._summary(history, start, step, time.time() - wall0, tracker.run_id, fingerprint)
        atomic_write_json(self.summary_path, summary)
        if status == "FINISHED":
            self._log_final_artifacts(tracker, summary)
            tracker.finish("FINISHED", sync_hint=self._sync_hint())
        else:  # stopped before the end (stop_after): the runs stay open for the resumed training
            tracker.suspend()
        return summary

    def _sync_hint(self) -> str:
        seed = f" --seed {self.params.seed}" if self.instance else ""
        return f"icpo sync-mlflow --run {self.run}{seed}"

    def _summary(
        self, history: list[dict], start: int, step: int, wall: float, run_id: str | None, fingerprint: str
    ) -> dict[str, Any]:
        def mean(key: str, rows: list[dict]) -> float | None:
            vals = [r[key] for r in rows if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        def total(key: str, rows: list[dict]) -> float | None:
            vals = [r[key] for r in rows if r.get(key) is not None]
            return float(np.sum(vals)) if vals else None

        last = history[-5:]
        return {
            "run": self.run,
            "instance": self.name,
            "seed": self.params.seed,
            "method": self.algo.method,
            "engine": "local",
            "device": self.device.type,
            "machine": machine.machine(),  # the report names the machine kinds a study trained on
            "rollout_backend": self.rollout_backend_used,
            "lora": self.train_cfg.lora.enabled,
            "trainable_params": sum(p.numel() for p in lora.trainable_parameters(self.model)),
            "steps": step,
            "total_steps": self.train_cfg.steps,
            "resumed_from_step": start,
            "wall_time_s": round(wall, 2),
            "mean_step_time_s": mean("perf/step_time_s", history),
            "reward_on_policy_mean": mean("reward/on_policy", history),
            "reward_on_policy_last5": mean("reward/on_policy", last),
            "reward_overall_mean": mean("reward/overall", history),
            "reward_overall_last5": mean("reward/overall", last),
            "ief_accept_rate_mean": mean("icpo/accept_rate", history),
            # compute accounting, whole run (resumed steps included): per unit of compute comparisons
            **{f"compute_{k}": total(f"perf/{k}", history) for k in COMPUTE_KEYS},
            "mlflow_run_id": run_id,
            "fingerprint": fingerprint,
        }

    def _log_final_artifacts(
        self, tracker: tracking.Tracker | tracking.TrackerGroup, summary: dict[str, Any]
    ) -> None:
        if not tracker.active:
            return
        tracker.log_dict(summary, "summary/train_summary.json")
        compute = {
            f"compute/{k}": summary[f"compute_{k}"] for k in COMPUTE_KEYS if summary.get(f"compute_{k}")
        }
        compute["compute/wall_time_s"] = summary["wall_time_s"]
        tracker.log_metrics([(int(summary["steps"]), compute)])
        tracker.log_artifact(self.steps_path, "curves")
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / f"curves_{self.name}.png"
            if plot_curves({self.run: (self.name, [self.steps_path])}, png):
                tracker.log_artifact(png, "curves")


def train_local(
    params: Params,
    run: str,
    *,
    root: str | Path = ".",
    reward_fn: RewardFn | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    instance: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) ``run`` with the local engine; returns the summary written to
    metrics/train_<instance>.json (``instance``: the study's ``<run>_s<seed>``; default: ``run``)."""
    trainer = LocalTrainer(params, run, root=root, reward_fn=reward_fn, progress=progress, instance=instance)
    return trainer.train(stop_after)
