"""Rollout tokens/s: vLLM (offline, in-process) vs transformers ``model.generate`` (docs/benchmarks.md, "vLLM").

Both through the local engine's one interface (:class:`icpo_core.engines.local.rollout.RolloutEngine`): the same
chat-templated training prompts, each repeated ``--samples`` times (the trainer's n rollouts per prompt), the same
sampling (temperature, top_p 1, no top-k, <= --max-new tokens, stop at EOS). vLLM samples as the trainer does
(one seed per call; ``--per-request-seeds`` adds an arm with a generator per request on the same engine). Rounds
alternate between the arms in one process, so background load hits all alike. Also reports the engine's start-up time, eager and (with
``--compiled``) with torch.compile, and the time of one in-place weight push.

    python scripts/bench_vllm_rollout.py --model models/base --data data/train.parquet --prompts 18 --samples 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--data", default="data/train.parquet")
    ap.add_argument("--prompts", type=int, default=18)
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt")
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="vLLM dtype")
    ap.add_argument("--compiled", action="store_true", help="also start a torch.compile engine and time it")
    ap.add_argument(
        "--per-request-seeds", action="store_true", help="also time vLLM with a seeded generator per request"
    )
    ap.add_argument("--kv-cache-gib", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icpo_core.config import TrainVllmParams
    from icpo_core.engines.local.data import load_prompts
    from icpo_core.engines.local.rollout import HFRolloutEngine
    from icpo_core.engines.local.vllm_rollout import VLLMRolloutEngine
    from icpo_core.rollout.eos import eos_token_ids

    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    rows = load_prompts(args.data, tok, max_prompt_length=4096, default_suffix="")
    prompts = [rows[i % len(rows)].prompt_ids for i in range(args.prompts) for _ in range(args.samples)]

    def start(eager: bool) -> VLLMRolloutEngine:
        cfg = TrainVllmParams(dtype=args.dtype, enforce_eager=eager, kv_cache_gib=args.kv_cache_gib)
        return VLLMRolloutEngine(args.model, tok, cfg, eos_ids=eos_token_ids(model, tok), device_type="cpu")

    vllm = start(eager=True)
    hf = HFRolloutEngine(model, tok)
    push_s = [vllm.push_weights(model) for _ in range(2)]
    kw = {"max_new_tokens": args.max_new, "temperature": args.temperature, "top_p": 1.0}

    def timed(engine, seed: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        roll = engine.generate(prompts, seed=seed, **kw)
        return roll.gen_tokens, time.perf_counter() - t0

    timed(vllm, 0)  # warm-up (first-call allocations)
    arms = [("hf", hf, False), ("vllm", vllm, False)]
    if args.per_request_seeds:
        arms.append(("vllm_per_request_seeds", vllm, True))
    res: dict[str, list[dict]] = {name: [] for name, _, _ in arms}
    for r in range(args.repeats):
        for name, engine, per_request in arms:
            if engine is vllm:
                vllm.per_request_seeds = per_request
            n, dt = timed(engine, seed=r + 1)
            res[name].append({"tokens": n, "seconds": round(dt, 2), "tokens_per_s": round(n / dt, 1)})
            print(name, res[name][-1], flush=True)
    out: dict = {
        "prompts": args.prompts,
        "samples": args.samples,
        "max_new": args.max_new,
        "temperature": args.temperature,
        "vllm_dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
        "vllm_startup_eager_s": round(vllm.startup_s, 1),
        "push_s": [round(x, 2) for x in push_s],
        "runs": res,
    }
    for name in res:
        out[f"{name}_tokens_per_s_median"] = statistics.median(x["tokens_per_s"] for x in res[name])
    out["speedup"] = round(out["vllm_tokens_per_s_median"] / out["hf_tokens_per_s_median"], 2)
    if args.per_request_seeds:
        out["speedup_per_request_seeds"] = round(
            out["vllm_per_request_seeds_tokens_per_s_median"] / out["hf_tokens_per_s_median"], 2
        )
        vllm.per_request_seeds = False
    vllm.close()
    if args.compiled:
        compiled = start(eager=False)
        out["vllm_startup_compiled_s"] = round(compiled.startup_s, 1)
        timed(compiled, 0)
        runs = [timed(compiled, seed=r + 1) for r in range(args.repeats)]
        out["vllm_compiled_tokens_per_s_median"] = round(statistics.median(n / dt for n, dt in runs), 1)
        compiled.close()
    out["load_avg_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":  # vLLM may spawn: keep the work under the main guard
    raise SystemExit(main())
