"""The trainer's forward/backward in float32 vs bfloat16 on this CPU (docs/benchmarks.md, "bf16").

One embedded ICPO step's update shape: ``--rows`` trajectories of ``--prompt`` prompt + ``--response`` response
tokens through the offline model, log-probs of the response tokens, a scalar loss, backward. Arms alternate in
rounds in one process (background load hits both alike):

- ``fp32``: the trainer today (float32 weights and activations);
- ``bf16_autocast``: float32 master weights, ``torch.autocast("cpu", torch.bfloat16)`` around the forward;
- ``bf16_weights``: the model cast to bfloat16 (no float32 master copy: what a pure-bf16 trainer would do).

Also prints the largest log-prob gap of each bf16 arm against float32 on the same tokens (the precision cost).

    python scripts/bench_bf16.py --model models/base --rows 12 --prompt 96 --response 64 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--prompt", type=int, default=96)
    ap.add_argument("--response", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    fp32 = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    vocab = fp32.config.vocab_size
    ids = torch.randint(0, vocab, (args.rows, args.prompt + args.response))
    resp = slice(args.prompt - 1, args.prompt + args.response - 1)

    def logprobs(model, autocast: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids).logits[:, resp].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[:, args.prompt :, None]).squeeze(-1)

    arms = {
        "fp32": lambda: logprobs(fp32, False),
        "bf16_autocast": lambda: logprobs(fp32, True),
        "bf16_weights": lambda: logprobs(bf16, False),
    }
    times: dict[str, list[float]] = {a: [] for a in arms}
    with torch.no_grad():
        ref = arms["fp32"]()
        gap = {a: float((fn() - ref).abs().max()) for a, fn in arms.items() if a != "fp32"}
    for _ in range(args.repeats):
        for arm, fn in arms.items():
            for m in (fp32, bf16):
                m.zero_grad(set_to_none=True)
            t = time.perf_counter()
            fn().mean().backward()
            times[arm].append(time.perf_counter() - t)
    out = {
        "shape": {"rows": args.rows, "prompt": args.prompt, "response": args.response},
        "times_s": times,
        "median_s": {a: statistics.median(v) for a, v in times.items()},
        "max_logprob_gap_vs_fp32": gap,
    }
    print(json.dumps(out, indent=1))
    base = out["median_s"]["fp32"]
    print(
        "\n| arm | forward+backward s (median) | vs fp32 | max log-prob gap vs fp32 |\n|---|---:|---:|---:|"
    )
    for arm, s in out["median_s"].items():
        print(f"| {arm} | {s:.2f} | {s / base:.2f}x | {gap.get(arm, 0.0):.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
