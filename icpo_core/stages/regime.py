"""``icpo regime``: the regime the study runs in, measured on the base model (``metrics/regime.json``).

``regime.k`` samples per training prompt (``regime.problems`` of them, a seeded sample), 0-shot and with the IEF
demos of ``regime.run``; the share of groups with reward variance and the mean reward of each, with 95 %
intervals (:mod:`icpo_core.engines.local.regime`). The report reads::

    {"problems": int, "k": int, "levels": [...],
     "zero_shot": {"groups_with_signal": f, "ci": [lo, hi], "mean_reward": f, ...},
     "with_demos": {"groups_with_signal": f, "ci": [lo, hi], "mean_reward": f, ...}, ...}
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from icpo_core import paths
from icpo_core.algorithm import off_policy_source
from icpo_core.engines.local import regime
from icpo_core.engines.local.data import load_demo_pool
from icpo_core.engines.local.rollout import make_rollout_engine
from icpo_core.engines.local.step_batch import autocast_dtype, pick_device
from icpo_core.errors import UserError
from icpo_core.grading import Grader
from icpo_core.io_utils import atomic_write_json

log = logging.getLogger(__name__)
HF_CHUNK = 64  # prompts per transformers generate call


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default=str(paths.METRICS_DIR / "regime.json"), help="metrics JSON (default: %(default)s)"
    )
    p.add_argument("--model", default=str(paths.BASE_MODEL_DIR), help="model folder (default: %(default)s)")
    p.add_argument(
        "--backend",
        choices=["vllm", "hf"],
        default=None,
        help="rollout engine (default: params regime.backend)",
    )
    p.add_argument("--problems", type=int, default=None, help="default: params regime.problems")


def start_engine(kind: str, model_dir: Path, params: Any) -> tuple[Any, Any]:
    """(rollout engine, tokenizer): the local trainer's own (``train.device``, ``train.vllm``, ``train.autocast``);
    ``vllm`` that cannot start falls back to ``hf`` with one warning, as in training."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tc = params.train
    device = pick_device(params)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    engine = make_rollout_engine(
        kind,
        model,
        tokenizer,
        model_dir=model_dir,
        vllm_cfg=tc.vllm,
        device=device,
        seed=params.seed,
        autocast_dtype=autocast_dtype(tc.autocast, device),
    )
    return engine, tokenizer


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    params = args.params_obj
    reg, tc = params.regime, params.train
    problems = reg.problems if args.problems is None else args.problems
    if problems < 1:
        raise UserError("--problems must be >= 1")
    if reg.run not in params.runs:
        raise UserError(
            f"regime.run '{reg.run}' is not in runs {sorted(params.runs)}; set regime.run to an ICPO run of `runs`"
        )
    algo = params.run_algorithm(reg.run)
    if not off_policy_source(algo).with_demos:
        raise UserError(
            f"regime.run '{reg.run}' samples no demo-conditioned rollouts (n_off {algo.n_off}, off_policy "
            f"{algo.off_policy}); name an ICPO run of `runs` (e.g. icpo)"
        )
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: no Hugging Face model folder (run `icpo base-model` first)")
    pool = load_demo_pool(paths.DEMOS_PARQUET, algo.k_demos)
    settings = regime.RegimeSettings(
        k=reg.k,
        max_tokens=reg.max_tokens or tc.max_response_length,
        temperature=tc.temperature,
        top_p=tc.top_p,
        k_demos=algo.k_demos,
        demo_format=algo.demo_format,
        seed=params.seed,
    )
    kind = args.backend or reg.backend
    t0 = time.perf_counter()
    engine, tokenizer = start_engine(kind, model_dir, params)
    startup_s = time.perf_counter() - t0
    if engine.name == "hf":  # transformers pads a call's prompts into one batch: keep batches small
        settings = replace(settings, chunk=HF_CHUNK)
    try:
        rows = regime.load_rows(
            paths.TRAIN_PARQUET, tokenizer, tc.max_prompt_length, params.train_prompt_suffix
        )
        rows = [rows[i] for i in regime.pick_problems(rows, problems, params.seed)]
        with Grader(workers=tc.grade_workers, timeout_s=tc.grade_timeout_s) as grader:

            def grade(texts: list[str], golds: list[str]) -> list[float]:
                return [v.reward for v in grader.grade(texts, golds)]

            measured = regime.measure(engine, tokenizer, grade, rows, pool, settings)
    finally:
        engine.close()
    metrics = {
        "problems": len(rows),
        "k": settings.k,
        "levels": regime.levels_of(paths.TRAIN_PARQUET, rows),
        **measured,
        "run": reg.run,
        "k_demos": settings.k_demos,
        "demo_format": settings.demo_format,
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
        "backend": engine.name,
        "startup_s": round(startup_s, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(args.out, metrics)
    z, d = metrics["zero_shot"], metrics["with_demos"]
    print(
        f"regime: {len(rows)} problems x {settings.k} ({engine.name}): groups with signal 0-shot "
        f"{z['groups_with_signal']:.0%} [{z['ci'][0]:.0%}, {z['ci'][1]:.0%}], with {settings.k_demos} demo(s) "
        f"{d['groups_with_signal']:.0%} [{d['ci'][0]:.0%}, {d['ci'][1]:.0%}]; mean reward "
        f"{z['mean_reward']:.3f} vs {d['mean_reward']:.3f} -> {args.out} ({metrics['seconds']} s)"
    )
    return 0
