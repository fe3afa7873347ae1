"""``icpo validate``: check params.yaml and print the resolved config; list each paper profile's study.

stdout: the resolved config of the active profile (JSON). stderr: per paper profile (``paper_*``), the stages its
study trains (``train@<run>-<seed>``, each with its ``merge@`` / ``bench@``), the ``dvc exp run`` line that runs it
(DVC expands stages from params.yaml's top level), the benchmarks with their sources, and the estimated GPU-hours
per arm (:mod:`icpo_core.engines.estimates`).
"""

from __future__ import annotations

import argparse
import json
import sys

from icpo_core.bench.registry import resolve_benchmarks
from icpo_core.config import Params, apply_sets, is_paper_profile, parse_params, read_raw, study_command
from icpo_core.engines.estimates import PUBLISHED_THROUGHPUT, gpu_hours
from icpo_core.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="also print the algorithm params of this run")


def study_stages(params: Params) -> list[str]:
    """The train stages of ``params``' study, as dvc.yaml names them (merge@ / bench@ follow each)."""
    s = params.study
    return [f"train@{r}-{seed}" for r in s.runs for seed in params.seeds] + [
        f"train_ablation@{r}-{seed}" for r in s.ablations for seed in s.ablation_seeds
    ]


def _source(src: dict) -> str:
    if src.get("hub"):
        extra = ", ".join(f"{k} {src[k]}" for k in ("config", "split") if src.get(k))
        return f"hub {src['hub']}" + (f" ({extra})" if extra else "")
    return f"url {src['url']}" if src.get("url") else f"path {src.get('path')}"


def paper_profile_lines(params: Params, raw: dict | None = None) -> list[str]:
    """The stderr lines about one paper profile's study (``params`` resolved with it active; ``raw``: params.yaml
    as DVC reads it)."""
    lines = [
        f"profile {params.profile}: {len(params.seeds)} seed(s) {params.seeds}, stages "
        + ", ".join(study_stages(params))
        + " (each with its merge@ and bench@)"
    ]
    lines.append(f"  run it with: {study_command(params, raw)}")
    try:
        specs = resolve_benchmarks(params.bench.benchmarks, params)
        lines.append("  benchmarks: " + "; ".join(f"{b.name} ({_source(b.source)})" for b in specs))
    except UserError as e:
        lines.append(f"  benchmarks: cannot resolve {params.bench.benchmarks}: {e}")
    arms = [*params.study.runs, *params.study.ablations]
    hours = ", ".join(f"{r} ~{gpu_hours(params, r):,.0f}" for r in arms)
    lines.append(
        f"  GPU-hours per arm and seed, an ESTIMATE (verl's published {PUBLISHED_THROUGHPUT.tokens_per_s_per_gpu:.0f} "
        f"tokens/s per GPU for a 7B model, every response at its cap; docs/method.md): {hours}"
    )
    return lines


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    out = params.model_dump(exclude={"profiles"})
    if args.run:
        out["run_algorithm"] = params.run_algorithm(args.run).model_dump()
    print(json.dumps(out, indent=2))
    raw = apply_sets(read_raw(args.params), args.sets, args.params)
    for name in sorted(params.profiles):
        if is_paper_profile(name):
            resolved = parse_params({**raw, "profile": name}, source=str(args.params))
            print("\n".join(paper_profile_lines(resolved, raw)), file=sys.stderr)
    return 0
