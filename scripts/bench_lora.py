"""Full fine-tuning vs LoRA (``train.lora``) on the embedded default, the same steps side by side.

Per arm: median step time, peak RSS while training, the checkpoint's size on disk, and the held-out greedy
accuracy (``synthetic_l0`` / ``synthetic_l1`` by default) of the merged model after the steps. Both arms use
params.yaml as it is (same seed, data order, rollouts budget); the LoRA arm sets ``train.lora.enabled`` and its
learning rate (default: 10x ``train.lr``, the "LoRA Without Regret" rule of thumb). ``--arms`` adds arms with
their own learning rate (``lora@2e-5``: LoRA at the full fine-tuning lr, the claim's control). A markdown table
goes to stdout, the raw numbers to ``--json``.

Needs the project's inputs: ``models/base`` (``icpo base-model``), ``data/train.parquet`` and ``data/eval``
(``icpo prepare-train``), ``data/demos.parquet`` (``icpo prepare-demos``). Each arm runs in its own subprocess
(its peak RSS is its own) in a scratch folder that links the project's ``models`` and ``data``: nothing is
written to the project's ``runs/``, ``metrics/`` or MLflow store.

    python scripts/bench_lora.py --steps 8 --json bench_lora.json
    python scripts/bench_lora.py --steps 8 --arms full,lora,lora@2e-5 --seed 1   # the 10x-lr claim
    python scripts/bench_lora.py --steps 1 --limit 4 --rollout-backend hf --bench-backend hf   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ARM_KINDS = ("full", "lora")
RESULT_PREFIX = "BENCH_LORA_RESULT "


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (the checkpoint's size on disk, apparent size)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def parse_arm(spec: str) -> tuple[str, float | None]:
    """``full`` / ``lora`` / ``<kind>@<lr>`` -> (kind, lr or None for the default)."""
    kind, _, lr = spec.partition("@")
    if kind not in ARM_KINDS:
        raise ValueError(f"arm {spec!r}: the kind must be one of {ARM_KINDS}, optionally @<lr>")
    return kind, float(lr) if lr else None


def arm_params(params: Any, args: argparse.Namespace, arm: str) -> Any:
    """params.yaml with this benchmark's steps / backend / seed, and for ``lora`` the adapters and their lr."""
    kind, lr = parse_arm(arm)
    lora = params.train.lora.model_copy(update={"enabled": kind == "lora"})
    if args.rank is not None:
        lora = lora.model_copy(update={"rank": args.rank})
    if args.alpha is not None:
        lora = lora.model_copy(update={"alpha": args.alpha})
    update: dict[str, Any] = {
        "steps": args.steps,
        "save_freq": args.steps,
        "keep_checkpoints": 1,
        "lora": lora,
    }
    if args.rollout_backend:
        update["rollout_backend"] = args.rollout_backend
    if lr is not None:
        update["lr"] = lr
    elif kind == "lora":
        update["lr"] = args.lora_lr if args.lora_lr is not None else 10 * params.train.lr
    train = params.train.model_copy(update=update)
    params = params.model_copy(update={"train": train})
    return params if args.seed is None else params.with_seed(args.seed)


def run_arm(args: argparse.Namespace, arm: str) -> dict[str, Any]:
    """Train, measure, merge and bench one arm in this process (cwd: the arm's scratch project)."""
    from icpo_core import checkpoint_layout as layout
    from icpo_core import paths, steplog
    from icpo_core.bench.backends import make_backend
    from icpo_core.bench.registry import resolve_benchmarks
    from icpo_core.bench.runner import BenchRunner
    from icpo_core.config import load_params
    from icpo_core.engines.local.merger import merge_checkpoint
    from icpo_core.engines.local.trainer import train_local

    params = arm_params(load_params("params.yaml"), args, arm)
    instance = "bench_lora_" + ("lora" if params.train.lora.enabled else "full")
    summary = train_local(params, args.run, root=".", progress=False, instance=instance)
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; training is the peak
    rows = steplog.read_steps(Path(paths.train_metrics_jsonl(instance)))
    times = [r["perf/step_time_s"] for r in rows]
    measured = times[1:] if len(times) > 1 else times  # step 1 warms up (first vLLM / grader calls)
    root = Path(paths.checkpoints_dir(instance))
    step = layout.latest_step(root)
    actor = layout.actor_dir(root, step)
    merged = Path(paths.merged_dir(instance))
    shutil.rmtree(merged, ignore_errors=True)
    dtype = "bfloat16" if params.model.save_dtype == "bfloat16" else "keep"
    merge_checkpoint(actor, merged, dtype, base_dir=paths.BASE_MODEL_DIR)
    specs = resolve_benchmarks(args.benchmarks.split(","), params)
    backend = args.bench_backend or params.bench.backend
    bench = params.bench
    runner = BenchRunner(
        merged,
        Path(paths.bench_dir(instance)),
        backend_factory=lambda: make_backend(backend, merged, bench, params.seed),
        backend_name=backend,
        seed=params.seed,
        grade_workers=bench.grade_workers,
        grade_timeout_s=bench.grade_timeout_s,
        chunk_prompts=bench.batch_size if backend == "hf" else 1024,
        limit=args.limit,
    )
    metrics = runner.run(specs, instance)
    return {
        "arm": arm,
        "lr": params.train.lr,
        "seed": args.seed,
        "lora": params.train.lora.model_dump() if params.train.lora.enabled else None,
        "rollout_backend": summary["rollout_backend"],
        "bench_backend": backend,
        "steps": summary["steps"],
        "trainable_params": summary["trainable_params"],
        "step_time_s": times,
        "step_time_median_s": statistics.median(measured),
        "peak_rss_gib": peak_rss_kib / 2**20,
        "checkpoint_bytes": dir_bytes(actor.parent),
        "checkpoint_model_optim_bytes": sum(f.stat().st_size for f in actor.glob("*.pt")),
        "accuracy": {n: m["avg_at_n"] for n, m in metrics["benchmarks"].items()},
        "n_problems": {n: m["n_problems"] for n, m in metrics["benchmarks"].items()},
        "reward_on_policy_mean": summary["reward_on_policy_mean"],
    }


def scratch_project(project: Path, params_file: Path, folder: Path) -> Path:
    """A project folder whose models/ and data/ are the real project's (links) and whose params are a copy."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("models", "data"):
        link = folder / name
        if not link.exists():
            link.symlink_to((project / name).resolve(), target_is_directory=True)
    shutil.copy(params_file, folder / "params.yaml")
    return folder


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """The arms as columns of one markdown table."""
    arms = list(results.values())
    first = arms[0]

    def mib(b: int) -> str:
        return f"{b / 2**20:,.1f}"

    def row(label: str, cell: Any) -> str:
        return f"| {label} | " + " | ".join(cell(a) for a in arms) + " |"

    seed = "params" if first["seed"] is None else first["seed"]
    lines = [
        f"| ({first['steps']} steps, seed {seed}, rollouts: {first['rollout_backend']}) | "
        + " | ".join("LoRA" if a["lora"] else "full fine-tuning" for a in arms)
        + " |",
        "|---" * (len(arms) + 1) + "|",
        row("learning rate", lambda a: f"{a['lr']:g}"),
        row(
            "LoRA rank / alpha", lambda a: f"{a['lora']['rank']} / {a['lora']['alpha']}" if a["lora"] else "-"
        ),
        row("trainable parameters", lambda a: f"{a['trainable_params']:,}"),
        row("step time, median (s)", lambda a: f"{a['step_time_median_s']:.1f}"),
        row("peak RSS of the training process (GiB)", lambda a: f"{a['peak_rss_gib']:.2f}"),
        row("checkpoint on disk (MiB)", lambda a: mib(a["checkpoint_bytes"])),
        row("mean on-policy reward over the steps", lambda a: f"{a['reward_on_policy_mean']:.3f}"),
    ]
    for name in first["accuracy"]:
        n = first["n_problems"][name]
        lines.append(
            row(
                f"{name} greedy accuracy (%, {n} problems)",
                lambda a, name=name: f"{100 * a['accuracy'][name]:.1f}",
            )
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=".", help="the project folder (models/, data/)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--run", default="icpo", help="a run of params.yaml `runs`")
    ap.add_argument("--steps", type=int, default=8, help="training steps of each arm")
    ap.add_argument("--lora-lr", type=float, default=None, help="LoRA learning rate (default: 10x train.lr)")
    ap.add_argument("--rank", type=int, default=None, help="LoRA rank (default: train.lora.rank)")
    ap.add_argument("--alpha", type=int, default=None, help="LoRA alpha (default: train.lora.alpha)")
    ap.add_argument("--rollout-backend", choices=["vllm", "hf"], default=None, help="default: params")
    ap.add_argument("--bench-backend", choices=["vllm", "hf"], default=None, help="default: params")
    ap.add_argument("--benchmarks", default="synthetic_l0,synthetic_l1")
    ap.add_argument(
        "--limit", type=int, default=None, help="first N problems of each benchmark (default: all)"
    )
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--json", default=None, help="write the raw results here")
    ap.add_argument(
        "--arms",
        default="full,lora",
        help="comma list of full | lora, each optionally @<lr> (e.g. lora@2e-5)",
    )
    ap.add_argument("--seed", type=int, default=None, help="training seed (default: params.yaml seed)")
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal: one arm
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    try:
        for a in arms:
            parse_arm(a)
    except ValueError as e:
        ap.error(str(e))

    if args.arm:  # the child: cwd is the arm's scratch project
        print(RESULT_PREFIX + json.dumps(run_arm(args, args.arm)), flush=True)
        return 0

    project = Path(args.project).resolve()
    missing = [
        p for p in ("models/base/config.json", "data/train.parquet", "data/demos.parquet", "data/eval")
    ]
    missing = [p for p in missing if not (project / p).exists()]
    if missing:
        print(
            f"{project}: missing {missing}; run icpo base-model, prepare-train, prepare-demos",
            file=sys.stderr,
        )
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_lora_"))
    passthrough = [a for a in sys.argv[1:]]
    results: dict[str, dict[str, Any]] = {}
    try:
        for i, arm in enumerate(arms):
            folder = scratch_project(project, Path(args.params).resolve(), work / f"arm{i}")
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), *passthrough, "--arm", arm],
                cwd=folder,
                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                stdout=subprocess.PIPE,
                text=True,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
            if proc.returncode != 0 or not lines:
                print(proc.stdout[-3000:], file=sys.stderr)
                print(f"arm {arm} failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            results[arm] = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
            results[arm]["wall_s"] = round(time.perf_counter() - t0, 1)
            print(f"{arm}: done in {results[arm]['wall_s']} s", file=sys.stderr, flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # vLLM may spawn: keep the work under the main guard
    raise SystemExit(main())
