"""Measure candidate regimes: how much learning signal GRPO and ICPO get from the offline model.

Each candidate is params.yaml with a system turn (``data.synthetic.system_prompt``) and a level mix
(``data.synthetic.levels``) swapped in. For each, the training set and the demo cache are built exactly as
``icpo prepare-train`` / ``icpo prepare-demos`` would build them (in a temporary folder), and the regime is
measured exactly as ``icpo regime`` measures it (:mod:`icpo_core.engines.local.regime`): k samples per training prompt, 0-shot
(the plain training prompt) and with the run's IEF demos (``algorithm.k_demos`` in ``algorithm.demo_format``,
each sample with its own draw, via the project's IEF prompt builder), graded by the project's grader:

- groups with signal: the share of prompts whose k rewards are neither all right nor all wrong (the groups that
  give GRPO a non-zero advantage), with a 95 % Wilson interval;
- mean reward (avg@k) with a 95 % bootstrap interval over problems;
- rescued: prompts whose 0-shot group is all wrong while the demo group finds a reward.

    python scripts/measure_regime.py --systems none format example --mixes L0+L1 L0 L1+L2 \\
        --demo-styles disjoint same --problems 128 --k 8 --max-tokens 64 --out regime.json

``--demo-styles`` beyond the first re-measure only the with-demos condition (0-shot does not depend on the demos).
The model is ``models/base`` (run `icpo base-model` first). One engine (the trainer's rollout engine, ``train.vllm``) serves every candidate. Prints a markdown
table; each finished row is also printed as JSON as it comes (and the JSON file is rewritten), so a long sweep
can be read while it runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

# Candidate system turns. `example` is the embedded default before this measurement.
SYSTEMS: dict[str, str | None] = {
    "none": None,
    "format": "Solve the math problem. End your reply with the final answer inside \\boxed{}.",
    "example": (
        "Solve the math problem. End your reply with the final answer inside \\boxed{}. Example: What is 3 + 4? "
        "3 + 4 = 7. The answer is \\boxed{7}."
    ),
    "boxed_only": (
        "Solve the math problem. End your reply with the final answer inside \\boxed{}, for example \\boxed{42}."
    ),
}
MIXES = {"L0": [0], "L1": [1], "L0+L1": [0, 1], "L1+L2": [1, 2], "L0+L1+L2": [0, 1, 2], "L2": [2]}


def candidate_params(raw: dict[str, Any], system: str | None, levels: list[int], demo_style: str) -> Any:
    from icpo_core.config import deep_merge, parse_params

    over = {"data": {"synthetic": {"system_prompt": system, "levels": levels, "demo_style": demo_style}}}
    return parse_params(deep_merge(raw, over))


def build_train(params: Any, model_dir: Path, folder: Path) -> Path:
    """The candidate's data/train.parquet (in ``folder``), as ``icpo prepare-train`` builds it."""
    from icpo_core.data.train_set import build_train_set

    train = folder / "train.parquet"
    build_train_set(params, train, model_dir)
    return train


def _correct(rewards: Any) -> list[int]:
    """Correct samples per problem (kept in the JSON: --resume recomputes `rescued` from it)."""
    return [int(x) for x in (rewards > 0).sum(axis=1)]


def _rewards(correct: list[int], k: int) -> Any:
    import numpy as np

    return np.array([[1.0] * c + [0.0] * (k - c) for c in correct])


def fmt_ci(x: dict[str, Any], key: str, ci: str) -> str:
    lo, hi = x[ci]
    return f"{100 * x[key]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    ap.add_argument("--mixes", nargs="+", default=["L0+L1"], choices=list(MIXES))
    ap.add_argument("--demo-styles", nargs="+", default=["disjoint"], choices=["disjoint", "same"])
    ap.add_argument("--problems", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default="regime.json")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --out, measure the rest")
    args = ap.parse_args()

    from icpo_core.algorithm.demos import DemoPool
    from icpo_core.data.demo_sources import build_demos
    from icpo_core.engines.local import regime
    from icpo_core.grading import Grader
    from icpo_core.stages.regime import HF_CHUNK, start_engine

    raw = yaml.safe_load(Path(args.params).read_text())
    model_dir = Path(args.model)
    base = candidate_params(raw, None, [0], args.demo_styles[0])
    algo = base.run_algorithm(base.regime.run)
    t0 = time.perf_counter()
    engine, tokenizer = start_engine(args.backend, model_dir, base)
    startup = time.perf_counter() - t0
    grader = Grader(workers=base.train.grade_workers, timeout_s=base.train.grade_timeout_s).start(wait=True)

    def grade(texts: list[str], golds: list[str]) -> list[float]:
        return [v.reward for v in grader.grade(texts, golds)]

    settings = regime.RegimeSettings(
        k=args.k,
        max_tokens=args.max_tokens,
        temperature=base.train.temperature,
        top_p=base.train.top_p,
        k_demos=algo.k_demos,
        demo_format=algo.demo_format,
        seed=base.seed,
        chunk=HF_CHUNK if engine.name == "hf" else None,
    )
    # --resume: rows already in --out are kept and not measured again (a sweep killed half-way goes on)
    old = json.loads(Path(args.out).read_text())["rows"] if args.resume and Path(args.out).is_file() else []
    rows_out: list[dict[str, Any]] = []
    done = {(r["mix"], r["system"], r["condition"]): r for r in old if "correct" in r}

    def emit(row: dict[str, Any]) -> None:
        rows_out.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "correct"}), flush=True)
        meta = {"startup_s": round(startup, 1), "backend": engine.name, "settings": settings.__dict__}
        Path(args.out).write_text(json.dumps({**meta, "rows": rows_out}, indent=1))

    try:
        for mix in args.mixes:
            for system in args.systems:
                conditions = ["0-shot"] + [f"{algo.k_demos}-shot {style}" for style in args.demo_styles]
                if all((mix, system, c) in done for c in conditions):
                    for c in conditions:
                        emit(done[(mix, system, c)])
                    continue
                params = candidate_params(raw, SYSTEMS[system], MIXES[mix], args.demo_styles[0])
                with tempfile.TemporaryDirectory() as tmp:
                    train = build_train(params, model_dir, Path(tmp))
                    rows = regime.load_rows(
                        train, tokenizer, params.train.max_prompt_length, params.train_prompt_suffix
                    )
                rows = [rows[i] for i in regime.pick_problems(rows, args.problems, params.seed)]
                golds = [r.gold for r in rows]
                head = {"mix": mix, "system": system, "problems": len(rows), "k": args.k}
                if (mix, system, "0-shot") in done:
                    zero_row = done[(mix, system, "0-shot")]
                else:
                    groups = [[list(r.prompt_ids)] * args.k for r in rows]
                    zero, rewards = regime.measure_condition(engine, grade, groups, golds, settings, 0)
                    zero_row = {**head, "condition": "0-shot", **zero, "correct": _correct(rewards)}
                emit(zero_row)
                zero_rewards = _rewards(zero_row["correct"], args.k)
                for style, condition in zip(args.demo_styles, conditions[1:], strict=True):
                    if (mix, system, condition) in done:
                        emit(done[(mix, system, condition)])
                        continue
                    demo_params = candidate_params(raw, SYSTEMS[system], MIXES[mix], style)
                    pool = DemoPool.from_records(build_demos(demo_params)[0])
                    groups = regime.ief_prompts(rows, pool, tokenizer, settings)
                    demos, rewards = regime.measure_condition(engine, grade, groups, golds, settings, 1)
                    rescue = regime.rescued(zero_rewards, rewards)
                    emit({**head, "condition": condition, **demos, **rescue, "correct": _correct(rewards)})
    finally:
        grader.close()
        engine.close()
    print(f"\nengine start-up {startup:.0f} s ({engine.name})\n")
    print(
        "| mix | system turn | condition | groups with signal % [95 % CI] | mean reward % [95 % CI] | "
        "any correct % | boxed % | rescued % | gen s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows_out:
        rescued_pct = f"{100 * r['rescued']:.0f}" if "rescued" in r else ""
        print(
            f"| {r['mix']} | `{r['system']}` | {r['condition']} | {fmt_ci(r, 'groups_with_signal', 'ci')} | "
            f"{fmt_ci(r, 'mean_reward', 'mean_reward_ci')} | {100 * r['any_correct']:.0f} | "
            f"{100 * r['boxed']:.0f} | {rescued_pct} | {r['gen_s']} |"
        )


if __name__ == "__main__":
    main()
