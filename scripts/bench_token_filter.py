"""Throughput of prepare-train's token-length filter (rows/s) with 1 and 2 worker processes.

Builds N synthetic rows of OpenR1-like length (problems of ~300 characters, R1-style traces of a few thousand
tokens, some over the 8192-token budget) and runs the project's filter on them (``token_filter``: batched
``datasets.map`` that counts prompt + trace tokens with the base model's tokenizer, then a filter).

    python scripts/bench_token_filter.py --model models/base --rows 20000 --procs 1 2

Needs a materialised base model (``icpo base-model``) for its tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

WORDS = [
    "the",
    "so",
    "we",
    "let",
    "then",
    "thus",
    "since",
    "hence",
    "therefore",
    "consider",
    "suppose",
    "note",
    "that",
    "if",
    "and",
    "or",
    "of",
    "for",
    "is",
    "are",
    "be",
    "to",
    "number",
    "sum",
    "product",
    "integer",
    "prime",
    "divisor",
    "equation",
    "solution",
    "value",
    "case",
    "check",
    "wait",
    "maybe",
    "compute",
    "find",
    "x",
    "y",
    "z",
    "n",
    "k",
    "a",
    "b",
    "c",
    "f(x)",
    "g(x)",
    "=",
    "+",
    "-",
    "*",
    "/",
    "^",
    "<",
    ">",
    "\\frac{1}{2}",
    "\\sqrt{3}",
    "\\cdot",
    "\\left(",
    "\\right)",
    "2",
    "3",
    "5",
    "7",
    "11",
    "13",
    "17",
    "19",
    "23",
    "100",
    "2024",
    "1/3",
    "0.5",
    "(1)",
    "(2)",
    "step",
    "first",
    "second",
    "finally",
    "answer",
    "boxed",
    "\\boxed{7}",
]
SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choices(WORDS, k=n_words))


def make_rows(n: int, seed: int):
    """OpenR1-like rows: ~300-char problems; traces of 1k-12k words (roughly 1.5k-18k tokens; median ~5k)."""
    rng = random.Random(seed)
    for i in range(n):
        words = int(rng.lognormvariate(8.1, 0.5))  # median ~3300 words
        yield {
            "problem": _text(rng, 55)[:300],
            "answer": str(i),
            "target": "<think>\n" + _text(rng, max(200, min(words, 12_000))) + "\n</think>\n\\boxed{7}",
            "level": -1,
            "drop": "",
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="models/base", help="folder with the tokenizer (default: %(default)s)"
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import datasets

    from icpo_core.data.train_set import token_filter

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as cache:
        ds = datasets.Dataset.from_generator(
            make_rows, gen_kwargs={"n": args.rows, "seed": args.seed}, cache_dir=cache
        )
        chars = sum(len(t) for t in ds["target"]) / len(ds)
        results = []
        for procs in args.procs:
            start = time.perf_counter()
            kept, dropped, tokens = token_filter(
                ds, tokenizer_dir=args.model, suffix=SUFFIX, max_tokens=args.max_tokens, num_proc=procs
            )
            seconds = time.perf_counter() - start
            results.append(
                {
                    "num_proc": procs,
                    "rows": len(ds),
                    "seconds": round(seconds, 1),
                    "rows_per_s": round(len(ds) / seconds, 1),
                    "tokens_per_s": round(tokens["mean"] * len(ds) / seconds),
                    "kept": len(kept),
                    "too_long": dropped,
                    "mean_tokens": round(tokens["mean"]),
                    "max_tokens_seen": tokens["max"],
                }
            )
            print(json.dumps(results[-1]))
    summary = {
        "model": str(Path(args.model)),
        "rows": args.rows,
        "mean_trace_chars": round(chars),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "results": results,
    }
    print("| num_proc | rows | seconds | rows/s | tokens/s | kept | too long |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['num_proc']} | {r['rows']} | {r['seconds']} | {r['rows_per_s']} | {r['tokens_per_s']:,} | "
            f"{r['kept']} | {r['too_long']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
