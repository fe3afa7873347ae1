"""ICPO vs GRPO training-step cost at the same group size (docs/benchmarks.md, "Training step cost").

ICPO's only extra work over GRPO is generating its N_off IEF trajectories per prompt (with longer, demo-carrying
prompts); the trained group has N_on rows in both. This runs GRPO and ICPO local-engine steps alternately (same
params, same data, so background load hits both alike) and reports the step-time ratio next to the ratio of
tokens each step processed in generation (generated + prefilled), plus the per-phase times.

    python scripts/bench_step_cost.py --steps 3 --runs grpo icpo --json bench_step_cost.json
    # or from the step logs of two finished trainings (same data order and seeds), warm-up step excluded:
    python scripts/bench_step_cost.py --from-jsonl metrics/steps_grpo.jsonl metrics/steps_icpo.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", nargs=2, default=["grpo", "icpo"], metavar=("BASELINE", "METHOD"))
    ap.add_argument(
        "--steps", type=int, default=3, help="measured steps per run (after one warm-up step each)"
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--from-jsonl", nargs=2, default=None, metavar=("BASELINE_JSONL", "METHOD_JSONL"))
    ap.add_argument("--skip", type=int, default=1, help="--from-jsonl: leading warm-up steps to leave out")
    args = ap.parse_args()
    if args.from_jsonl:
        rows = {}
        for name, path in zip(args.runs, args.from_jsonl, strict=True):
            lines = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
            rows[name] = [r for r in lines if r["step"] > args.skip]
        return report(args, rows, {r: None for r in args.runs}, args.from_jsonl)

    from icpo_core.config import load_params
    from icpo_core.engines.local.trainer import LocalTrainer
    from icpo_core.grading import Grader

    params = load_params(args.params)
    n_on = {r: params.run_algorithm(r).n_on for r in args.runs}
    if len(set(n_on.values())) != 1:
        raise SystemExit(f"runs must share the group size n_on, got {n_on}")
    trainers = {}
    with Grader(workers=params.train.grade_workers, timeout_s=params.train.grade_timeout_s) as grader:
        for r in args.runs:
            t = LocalTrainer(params, r, progress=False)
            t.setup(grader=grader)
            trainers[r] = t
        rows: dict[str, list[dict]] = {r: [] for r in args.runs}
        for step in range(1, args.steps + 2):
            for r, t in trainers.items():
                m = t.train_step(step)
                if step > 1:  # step 1 is the warm-up
                    rows[r].append(m)
                print(r, step, {k: round(v, 2) for k, v in m.items() if k.startswith(("perf/", "timing/"))})

    return report(args, rows, {r: params.run_algorithm(r).n_off for r in args.runs}, args.params)


def report(args: argparse.Namespace, rows: dict[str, list[dict]], n_off: dict, source: object) -> int:
    def total(r: str, key: str) -> float:
        return sum(m[key] for m in rows[r])

    base, meth = args.runs
    out: dict = {"source": source, "steps": {r: [m["step"] for m in rows[r]] for r in args.runs}}
    for r in args.runs:
        out[r] = {
            "n_off": n_off[r],
            "step_time_s_mean": statistics.mean(m["perf/step_time_s"] for m in rows[r]),
            "step_time_s_median": statistics.median(m["perf/step_time_s"] for m in rows[r]),
            "gen_s_median": statistics.median(m["timing/gen_s"] for m in rows[r]),
            "gen_tokens": total(r, "perf/gen_tokens"),
            "prefill_tokens": total(r, "perf/prefill_tokens"),
            "train_tokens": total(r, "perf/train_tokens"),
            **{k: total(r, k) for k in rows[r][0] if k.startswith("timing/")},
        }
    tok = {r: out[r]["gen_tokens"] + out[r]["prefill_tokens"] for r in args.runs}
    out["time_ratio"] = total(meth, "perf/step_time_s") / total(base, "perf/step_time_s")
    out["gen_time_ratio"] = total(meth, "timing/gen_s") / total(base, "timing/gen_s")
    out["token_ratio_gen_plus_prefill"] = tok[meth] / tok[base]
    out["gen_token_ratio"] = out[meth]["gen_tokens"] / out[base]["gen_tokens"]
    # Medians resist the occasional slow step of a shared machine.
    out["median_time_ratio"] = out[meth]["step_time_s_median"] / out[base]["step_time_s_median"]
    out["median_gen_time_ratio"] = out[meth]["gen_s_median"] / out[base]["gen_s_median"]
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
