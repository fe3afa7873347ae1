"""Local rollout throughput vs bare ``model.generate`` on the same batch (docs/benchmarks.md, "rollout").

The local engine's rollout (``icpo_core.engines.local.rollout.generate``) pads, seeds, calls ``model.generate``
and splits the output into responses and masks. This measures what that wrapper costs: generated tokens per second
of the wrapper and of a bare ``model.generate`` call on identical padded inputs and sampling settings, run
alternately so background load hits both alike.

    python scripts/bench_rollout.py --model models/base --data data/train.parquet --prompts 32 --max-new 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--data", default="data/train.parquet")
    ap.add_argument("--prompts", type=int, default=32, help="rows in the batch")
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from icpo_core.engines.local.data import load_prompts
    from icpo_core.engines.local.rollout import generate
    from icpo_core.rollout.eos import eos_token_ids
    from icpo_core.rollout.tokens import left_pad, response_mask_from

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    if tok.pad_token_id is None:  # as the trainer does: pad with EOS
        tok.pad_token = tok.eos_token
    rows = load_prompts(args.data, tok, max_prompt_length=4096, default_suffix="")
    prompts = [rows[i % len(rows)].prompt_ids for i in range(args.prompts)]
    eos = eos_token_ids(model, tok)
    ids, mask = left_pad(prompts, tok.pad_token_id)
    cfg = GenerationConfig(
        do_sample=True,
        temperature=args.temperature,
        top_p=1.0,
        top_k=0,
        max_new_tokens=args.max_new,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
        use_cache=True,
    )

    def bare() -> tuple[int, float]:
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
        dt = time.perf_counter() - t0
        return int(response_mask_from(out[:, ids.shape[1] :], eos).sum()), dt

    def wrapped() -> tuple[int, float]:
        t0 = time.perf_counter()
        roll = generate(
            model, tok, prompts, max_new_tokens=args.max_new, temperature=args.temperature, seed=args.seed
        )
        return roll.gen_tokens, time.perf_counter() - t0

    bare()  # warm-up (first-call allocations)
    res: dict[str, list[float]] = {"bare": [], "local": []}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("local", wrapped)):
            n, dt = fn()
            tokens[name] = n
            res[name].append(n / dt)
    out = {
        "prompts": args.prompts,
        "max_new_tokens": args.max_new,
        "threads": torch.get_num_threads(),
        "gen_tokens": tokens,
        "bare_tokens_per_s": statistics.median(res["bare"]),
        "local_tokens_per_s": statistics.median(res["local"]),
        "all": res,
    }
    out["ratio_local_over_bare"] = out["local_tokens_per_s"] / out["bare_tokens_per_s"]
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
