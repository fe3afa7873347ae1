"""Measure the embedded regime: how much learning signal GRPO and ICPO get from the offline model.

For each candidate prompt format x synthetic level mix, on >= 128 held-out-style problems, sample k responses
per prompt at temperature 1.0, 0-shot (the plain prompt) and 1-shot (one solved demo as a prior chat turn, as
IEF builds it), grade them with the project's grader and report:

- accuracy: mean reward over all samples (avg@k);
- signal: the share of prompts whose k samples have reward variance (0 < correct < k), i.e. the groups that give
  GRPO a non-zero advantage.

    python scripts/measure_regime.py --backend vllm --problems 128 --k 8 --max-tokens 64 --out regime.json

The model is ``models/base`` (run `icpo base-model` first). Problems and demos come from the project's synthetic
generator (seeded), never from the training split a run uses (a fresh seed). Print a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PAPER_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."
OURS_SUFFIX = " Put your final answer within \\boxed{}."
SYSTEM_FORMAT = (
    "You are a helpful assistant. Solve the problem, then give the final answer as a number inside "
    "\\boxed{}, for example \\boxed{42}."
)
SYSTEM_EXAMPLE = (
    "Solve the math problem. End your reply with the final answer inside \\boxed{}. Example: "
    "What is 3 + 4? 3 + 4 = 7. The answer is \\boxed{7}."
)
FORMATS = {
    "paper_suffix": (None, PAPER_SUFFIX),
    "ours_suffix": (None, OURS_SUFFIX),
    "system_prompt": (SYSTEM_FORMAT, OURS_SUFFIX),
    "system_example": (SYSTEM_EXAMPLE, OURS_SUFFIX),
}
MIXES = {"L0+L1": (0, 1), "L1+L2": (1, 2), "L0": (0,), "L1": (1,)}


def messages(problem: str, fmt: str, demo=None) -> list[dict[str, str]]:
    system, suffix = FORMATS[fmt]
    msgs = [{"role": "system", "content": system}] if system else []
    if demo is not None:
        msgs += [
            {"role": "user", "content": demo.problem + suffix},
            {"role": "assistant", "content": demo.solution},
        ]
    return msgs + [{"role": "user", "content": problem + suffix}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--formats", nargs="+", default=list(FORMATS))
    ap.add_argument("--mixes", nargs="+", default=["L0+L1", "L1+L2"])
    ap.add_argument("--problems", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=777, help="problem generator seed (not the training data's)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="vLLM dtype")
    ap.add_argument("--shots", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--out", default="regime.json")
    args = ap.parse_args()

    import numpy as np

    from icpo_core.bench.backends import make_backend
    from icpo_core.bench.registry import Sampling
    from icpo_core.config import BenchParams
    from icpo_core.data.synthetic import generate_splits
    from icpo_core.grading import Grader

    bench = BenchParams(backend=args.backend, batch_size=64, grade_workers=2, vllm={"dtype": args.dtype})
    t0 = time.perf_counter()
    backend = make_backend(args.backend, Path(args.model), bench, 0)
    startup = time.perf_counter() - t0
    grader = Grader(workers=2, timeout_s=5.0).start(wait=True)
    sampling = Sampling(n=args.k, temperature=1.0, top_p=1.0, top_k=None, max_tokens=args.max_tokens)
    rows = []
    try:
        for mix in args.mixes:
            levels = MIXES[mix]
            per = -(-args.problems // len(levels))
            splits = generate_splits(levels, train=0, demo=per, eval=per, seed=args.seed)
            problems, demos = splits["eval"][: args.problems], splits["demo"]
            rng = np.random.default_rng(args.seed)
            for fmt in args.formats:
                for shots in args.shots:
                    prompts = []
                    for p in problems:
                        demo = demos[int(rng.integers(len(demos)))] if shots else None
                        prompts.append(backend.render(messages(p.problem, fmt, demo)))
                    t1 = time.perf_counter()
                    outs = backend.generate(prompts, sampling)
                    gen_s = time.perf_counter() - t1
                    texts = [c.text for o in outs for c in o]
                    golds = [p.answer for p in problems for _ in range(args.k)]
                    rewards = np.array([v.reward for v in grader.grade(texts, golds)]).reshape(
                        len(problems), -1
                    )
                    correct = rewards.sum(1)
                    tokens = sum(c.tokens for o in outs for c in o)
                    row = {
                        "mix": mix,
                        "format": fmt,
                        "shots": shots,
                        "problems": len(problems),
                        "k": args.k,
                        "accuracy": float(rewards.mean()),
                        "signal": float(((correct > 0) & (correct < args.k)).mean()),
                        "any_correct": float((correct > 0).mean()),
                        "boxed": float(np.mean(["\\boxed{" in t for t in texts])),
                        "tokens": tokens,
                        "gen_s": round(gen_s, 1),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        grader.close()
        backend.close()
    Path(args.out).write_text(json.dumps({"startup_s": startup, "rows": rows}, indent=1))
    print(f"\nengine start-up {startup:.0f} s\n")
    print("| mix | format | shots | accuracy | prompts with signal | any correct | boxed | gen s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mix']} | {r['format']} | {r['shots']} | {100 * r['accuracy']:.1f} % | "
            f"{100 * r['signal']:.0f} % | {100 * r['any_correct']:.0f} % | {100 * r['boxed']:.0f} % | {r['gen_s']} |"
        )


if __name__ == "__main__":
    main()
