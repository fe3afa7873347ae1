"""``icpo grade --predictions IN.jsonl --out METRICS.json``: grade an existing predictions file.

Each input row needs ``response`` and ``answer`` (the gold answer); ``benchmark`` and ``problem`` are optional
(rows of one problem are its n samples: avg@n and pass@k are computed as in ``icpo bench``). Writes the
per-sample verdicts next to the output (``METRICS.verdicts.jsonl``) and per-benchmark accuracy to METRICS.json.
The grader, extraction rules and metrics are the ones the bench stage uses.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from icpo_core.bench.metrics import overall_average, summarize_benchmark
from icpo_core.bench.registry import load_registry
from icpo_core.errors import DataError, UserError
from icpo_core.grading import FALLBACKS, Grader
from icpo_core.io_utils import atomic_path, atomic_write_json, read_jsonl


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictions", required=True, help="JSONL rows: response, answer [, benchmark, problem]")
    p.add_argument(
        "--out", required=True, help="metrics JSON to write (verdicts go to <out stem>.verdicts.jsonl)"
    )
    p.add_argument(
        "--fallbacks",
        default=None,
        help="comma-separated answer fallbacks for responses without \\boxed{} (answer_is, answer_letter, "
        "last_number; 'none' for strict boxed). Default: the benchmark's registry entry, else none",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="grading processes (default: bench.grade_workers)"
    )
    p.add_argument(
        "--timeout", type=float, default=None, help="seconds per sample (default: bench.grade_timeout_s)"
    )


def read_predictions(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"--predictions: {path} not found")
    rows = read_jsonl(path, "--predictions")
    for lineno, row in enumerate(rows, 1):
        if "response" not in row or "answer" not in row:
            raise DataError(f"{path}: row {lineno}: each row needs 'response' and 'answer' (the gold answer)")
    if not rows:
        raise DataError(f"{path}: no prediction rows")
    return rows


def verdicts_path(out: Path) -> Path:
    return out.with_name(out.stem + ".verdicts.jsonl")


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    out = Path(args.out)
    rows = read_predictions(Path(args.predictions))
    if args.fallbacks is not None:
        forced = (
            [] if args.fallbacks.strip() in ("", "none") else [x.strip() for x in args.fallbacks.split(",")]
        )
        bad = [x for x in forced if x not in FALLBACKS]
        if bad:
            raise UserError(f"--fallbacks: unknown {bad}; allowed: {list(FALLBACKS)} or none")
    registry = load_registry(params.bench.registry)
    defaults = (registry.get("defaults") or {}).get("fallbacks") or []

    def fallbacks_of(bench: str) -> list[str]:
        if args.fallbacks is not None:
            return forced
        entry = (registry.get("benchmarks") or {}).get(bench)
        return list(entry.get("fallbacks", defaults) or []) if entry else []

    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[str(r.get("benchmark") or "all")].append(i)
    verdicts: list[Any] = [None] * len(rows)
    t0 = time.monotonic()
    workers = args.workers or params.bench.grade_workers
    timeout = args.timeout or params.bench.grade_timeout_s
    with Grader(workers, timeout) as grader:
        for bench, idx in groups.items():
            vs = grader.grade(
                [str(rows[i]["response"]) for i in idx],
                [str(rows[i]["answer"]) for i in idx],
                fallbacks=fallbacks_of(bench),
            )
            for i, v in zip(idx, vs, strict=True):
                verdicts[i] = v
    grade_s = time.monotonic() - t0

    out_rows = []
    for i, (r, v) in enumerate(zip(rows, verdicts, strict=True)):
        out_rows.append(
            {
                "index": i,
                "benchmark": str(r.get("benchmark") or "all"),
                # rows without a problem are their own problem (n = 1)
                "problem_id": str(r["problem"]) if r.get("problem") is not None else f"#{i}",
                **({"problem": r["problem"]} if r.get("problem") is not None else {}),
                "gold": str(r["answer"]),
                **v.to_dict(),
            }
        )
    with atomic_path(verdicts_path(out)) as tmp:
        tmp.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in out_rows))
    per_bench: dict[str, Any] = {}
    for bench in groups:
        b_rows = [x for x in out_rows if x["benchmark"] == bench]
        per_bench[bench] = summarize_benchmark(b_rows, [1, 2, 4, 8, 16, 32])
    correct = sum(v.correct for v in verdicts)
    metrics = {
        "predictions": str(args.predictions),
        "benchmarks": per_bench,
        "overall": {"n_samples": len(rows), "correct": correct, "accuracy": correct / len(rows)},
        "average": {"avg_at_n": overall_average(per_bench)},
        "timing": {"grade_s": round(grade_s, 3), "samples_per_s": round(len(rows) / max(grade_s, 1e-9), 1)},
    }
    atomic_write_json(out, metrics)
    for bench, m in per_bench.items():
        print(
            f"{bench:>16}: accuracy {m['accuracy']:.3f} avg@n {m['avg_at_n']:.3f} ({m['n_samples']} samples)"
        )
    print(
        f"{'overall':>16}: accuracy {metrics['overall']['accuracy']:.3f} ({len(rows)} samples, {grade_s:.1f}s)"
    )
    print(f"verdicts: {verdicts_path(out)}")
    return 0
