"""Embedded step time with vLLM rollouts vs transformers rollouts, and ICPO / GRPO with vLLM (docs/benchmarks.md).

Three local-engine trainers on params.yaml (the embedded default): ``icpo`` with ``train.rollout_backend: hf``,
``icpo`` with ``vllm`` and ``grpo`` with ``vllm``, stepped round-robin (same data order and step seeds, so
background load hits all alike). Step 1 is the warm-up and left out. Reports per phase (generation, weight push,
reference / old log-probs, update) the median seconds, the ICPO / GRPO step-time ratio next to the ratio of the
tokens each step processed in generation (generated + prefilled), and each vLLM engine's start-up time.
``--bf16-arm`` adds ``icpo`` with ``vllm`` and ``train.autocast: bfloat16`` (the trainer's forward/backward in
bf16 autocast on CPU).

    python scripts/bench_step_backends.py --steps 3 --json bench_step_backends.json
    python scripts/bench_step_backends.py --steps 3 --bf16-arm
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

PHASES = {
    "generation": "timing/gen_s",
    "weight push": "timing/push_s",
    "reference + old log-probs": ("timing/ref_s", "timing/old_s"),
    "update": "timing/update_s",
    "grading": "timing/reward_s",
    "step": "perf/step_time_s",
}


def _value(m: dict, key: str | tuple[str, ...]) -> float:
    return sum(m[k] for k in key) if isinstance(key, tuple) else m[key]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=3, help="measured steps per trainer (after one warm-up)")
    ap.add_argument("--kv-cache-gib", type=int, default=1)
    ap.add_argument("--bf16-arm", action="store_true", help="add icpo/vllm with train.autocast: bfloat16")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from icpo_core.config import load_params
    from icpo_core.engines.local.trainer import LocalTrainer
    from icpo_core.grading import Grader

    params = load_params(args.params)
    setups = {
        "icpo/hf": ("icpo", "hf", "auto"),
        "icpo/vllm": ("icpo", "vllm", "auto"),
        "grpo/vllm": ("grpo", "vllm", "auto"),
    }
    if args.bf16_arm:
        setups["icpo/vllm/bf16"] = ("icpo", "vllm", "bfloat16")
    trainers: dict[str, LocalTrainer] = {}
    startup: dict[str, float] = {}
    rows: dict[str, list[dict]] = {k: [] for k in setups}
    with Grader(workers=params.train.grade_workers, timeout_s=params.train.grade_timeout_s) as grader:
        for key, (run, backend, autocast) in setups.items():
            vllm_cfg = params.train.vllm.model_copy(update={"kv_cache_gib": args.kv_cache_gib})
            update = {"rollout_backend": backend, "vllm": vllm_cfg, "autocast": autocast}
            train = params.train.model_copy(update=update)
            t = LocalTrainer(params.model_copy(update={"train": train}), run, progress=False)
            t.setup(grader=grader)
            t0 = time.perf_counter()
            engine = t.start_rollout_engine()
            startup[key] = round(time.perf_counter() - t0, 1)
            if engine.name != backend:
                raise SystemExit(f"{key}: the {backend} engine did not start (fell back to {engine.name})")
            trainers[key] = t
        for step in range(1, args.steps + 2):
            for key, t in trainers.items():
                m = t.train_step(step)
                print(key, step, {k: round(_value(m, v), 2) for k, v in PHASES.items()}, flush=True)
                if step > 1:
                    rows[key].append(m)
    for t in trainers.values():
        t.rollout_engine.close()

    med = {
        k: {p: round(statistics.median(_value(m, v) for m in rows[k]), 2) for p, v in PHASES.items()}
        for k in rows
    }

    def tokens(k: str) -> float:
        return sum(m["perf/gen_tokens"] + m["perf/prefill_tokens"] for m in rows[k])

    def step_sum(k: str) -> float:
        return sum(m["perf/step_time_s"] for m in rows[k])

    out = {
        "steps_measured": args.steps,
        "load_avg_end": os.getloadavg(),
        "startup_s": startup,
        "median_s": med,
        "vllm_over_hf_step": round(med["icpo/vllm"]["step"] / med["icpo/hf"]["step"], 2),
        "vllm_bf16_over_hf_step": (
            round(med["icpo/vllm/bf16"]["step"] / med["icpo/hf"]["step"], 2) if args.bf16_arm else None
        ),
        "icpo_over_grpo_vllm": {
            "step_time_median": round(med["icpo/vllm"]["step"] / med["grpo/vllm"]["step"], 2),
            "step_time_sum": round(step_sum("icpo/vllm") / step_sum("grpo/vllm"), 2),
            "generation_median": round(med["icpo/vllm"]["generation"] / med["grpo/vllm"]["generation"], 2),
            "tokens": round(tokens("icpo/vllm") / tokens("grpo/vllm"), 2),
            "generated_tokens": round(
                sum(m["perf/gen_tokens"] for m in rows["icpo/vllm"])
                / sum(m["perf/gen_tokens"] for m in rows["grpo/vllm"]),
                2,
            ),
        },
        "tokens_sum": {k: tokens(k) for k in rows},
        "rows": {k: [{p: round(_value(m, v), 2) for p, v in PHASES.items()} for m in rows[k]] for k in rows},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":  # vLLM may spawn: keep the work under the main guard
    raise SystemExit(main())
