"""Driver-side cost of ICPO's batch transforms in the verl engine, per training step.

ICPOAgentLoopManager runs `expand_with_ief` (demo prompts for the IEF rows) before generation and
`mix_generated` (ERRS, replacement, prompt restore, bonus) after it, on the trainer process's CPU. This times
both on synthetic DataProto batches of the given shape (the tensors the agent loop returns), so the overhead can
be compared with a step's generation time.

    python scripts/bench_icpo_batch_ops.py                          # paper scale: 128 prompts x (8 + 1), 8192 + 8192
    python scripts/bench_icpo_batch_ops.py --prompts 4 --prompt-len 1024 --resp-len 64   # embedded default
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--n-on", type=int, default=8)
    ap.add_argument("--n-off", type=int, default=1)
    ap.add_argument(
        "--prompt-len", type=int, default=8192, help="rollout prompt width (ICPO: 2 x max_prompt_length)"
    )
    ap.add_argument("--resp-len", type=int, default=8192)
    ap.add_argument("--demos", type=int, default=7500, help="demo pool size (MATH train)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from verl import DataProto
    from verl.utils.model import compute_position_id_with_mask

    from icpo_core.algorithm import DemoPool, off_policy_source
    from icpo_core.config import AlgorithmParams
    from icpo_core.engines.verl.batch_ops import expand_with_ief, mix_generated

    algo = AlgorithmParams(n_on=args.n_on, n_off=args.n_off, reward_shaping=True)
    pool = DemoPool.from_records(
        {
            "problem": f"problem {i} " * 20,
            "solution": f"solution {i} " * 100 + f"\\boxed{{{i}}}",
            "answer": str(i),
        }
        for i in range(args.demos)
    )
    b, p, r = args.prompts, args.prompt_len, args.resp_len
    uids = np.repeat(np.array([str(uuid.uuid4()) for _ in range(b)], dtype=object), args.n_on)
    n = len(uids)
    raw = np.empty(n, dtype=object)
    for i in range(n):
        raw[i] = [{"role": "user", "content": f"question {i // args.n_on} " * 30}]
    prompts = DataProto.from_dict(
        non_tensors={
            "uid": uids,
            "raw_prompt": raw,
            "extra_info": np.array(
                [{"question": f"question {i // args.n_on}"} for i in range(n)], dtype=object
            ),
        },
        meta_info={"global_steps": 10},
    )
    expand_s, mix_s = [], []
    for rep in range(args.repeats):
        rng = np.random.default_rng(rep)
        t0 = time.perf_counter()
        ext, src = expand_with_ief(prompts, algo, off_policy_source(algo), pool, " suffix", rng)
        expand_s.append(time.perf_counter() - t0)

        # what the agent loop returns for the extended batch: left-padded prompts, right-padded responses
        m = len(ext)
        g = torch.Generator().manual_seed(rep)
        p_len = torch.randint(p // 8, p // 2, (m,), generator=g)
        r_len = torch.randint(1, r, (m,), generator=g)
        cols = torch.arange(p)
        p_mask = (cols[None, :] >= (p - p_len)[:, None]).long()
        r_mask = (torch.arange(r)[None, :] < r_len[:, None]).long()
        attn = torch.cat([p_mask, r_mask], 1)
        ids = torch.randint(0, 150_000, (m, p + r), generator=g)
        scores = torch.zeros(m, r)
        scores[torch.arange(m), r_len - 1] = torch.randint(0, 2, (m,), generator=g).float()
        out = DataProto.from_dict(
            tensors={
                "prompts": ids[:, :p].clone(),
                "responses": ids[:, p:].clone(),
                "response_mask": r_mask,
                "input_ids": ids,
                "attention_mask": attn,
                "position_ids": compute_position_id_with_mask(attn),
                "rm_scores": scores,
            },
            non_tensors={"raw_prompt": ext.non_tensor_batch["raw_prompt"]},
        )
        t0 = time.perf_counter()
        final, metrics = mix_generated(uids, out, src, algo, 10, 400, rng)
        mix_s.append(time.perf_counter() - t0)
        assert len(final) == n
    print(
        f"rows in {n} + IEF {len(src)}, width {p}+{r}; accepted {metrics['icpo/ief_accepted']:.0f}; "
        f"expand_with_ief median {statistics.median(expand_s) * 1000:.1f} ms; "
        f"mix_generated median {statistics.median(mix_s) * 1000:.1f} ms (repeats {args.repeats})"
    )


if __name__ == "__main__":
    main()
