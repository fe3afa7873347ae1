"""Cost per training step of MLflow's system metrics (``tracking.system_metrics``; docs/benchmarks.md, "MLflow
system metrics: cost per step").

Trains the tiny project (:func:`icpo_core.engines.local.tiny.make_tiny_project`: the random tiny model, the local
engine on CPU, a toy reward instead of the grader's processes) ``--repeats`` times with the monitor off and on,
back to back and in alternating order (so background load hits both alike), each run a fresh project against
one SQLite store, and reports per setting the mean step time (the trainer's ``perf/step_time_s``), the wall time
of the whole ``train_local`` call (which includes starting and stopping the monitor) and the process's CPU time
(all threads, the monitor's included: on a loaded machine the steadier measure of what the monitor costs), each
per step; then on - off per step, between the settings (Welch 95 % interval) and within each back-to-back pair
(paired t interval). MLflow samples every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (default 10, what a
training gets); ``--interval`` sets it.

    python scripts/bench_system_metrics.py --steps 10 --repeats 3 --json system_metrics_cost.json
    python scripts/bench_system_metrics.py --from-json system_metrics_cost.json   # summarise again
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

MEASURES = ("step_s", "wall_per_step_s", "cpu_per_step_s")


def parity_reward(texts: list[str], golds: list[str]) -> list[float]:
    """A deterministic toy reward with mixed groups (no grader processes: less noise in the timing)."""
    return [float(len(t) % 2 == 0) for t in texts]


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(b) - mean(a) with a Welch 95 % interval."""
    from scipy import stats

    d = statistics.fmean(b) - statistics.fmean(a)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else 1.0
    q = float(stats.t.ppf(0.975, dof))
    return d, d - q * se, d + q * se


def paired(off: list[float], on: list[float]) -> tuple[float, float, float]:
    """Mean of the per-pair differences on - off (pair i ran back to back) with its t interval."""
    from scipy import stats

    diffs = [b - a for a, b in zip(off, on, strict=True)]
    d = statistics.fmean(diffs)
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return d, d - half, d + half


def summarise(out: dict) -> None:
    """Per measure: mean and sd of each setting, on - off (Welch) and the mean paired difference (into ``out``)."""
    results = out["runs"]
    for key in MEASURES:
        off = [r[key] for r in results["off"]]
        on = [r[key] for r in results["on"]]
        d, lo, hi = welch(off, on)
        pd, plo, phi = paired(off, on)
        out[key] = {
            "off_mean": statistics.fmean(off),
            "off_sd": statistics.stdev(off),
            "on_mean": statistics.fmean(on),
            "on_sd": statistics.stdev(on),
            "on_minus_off": d,
            "ci95": [lo, hi],
            "paired_on_minus_off": pd,
            "paired_ci95": [plo, phi],
        }
        print(
            f"{key}: off {statistics.fmean(off) * 1e3:.0f} ms (sd {statistics.stdev(off) * 1e3:.0f}), "
            f"on {statistics.fmean(on) * 1e3:.0f} ms (sd {statistics.stdev(on) * 1e3:.0f}); on - off "
            f"{d * 1e3:+.0f} ms per step [Welch 95 % CI {lo * 1e3:+.0f}, {hi * 1e3:+.0f}]; paired "
            f"{pd * 1e3:+.0f} [{plo * 1e3:+.0f}, {phi * 1e3:+.0f}]"
        )


def one_run(folder: Path, uri: str, steps: int, on: bool) -> dict[str, float]:
    import yaml
    from mlflow.tracking import MlflowClient

    from icpo_core.config import load_params
    from icpo_core.engines.local.tiny import make_tiny_project
    from icpo_core.engines.local.trainer import train_local

    root = make_tiny_project(folder, train={"steps": steps, "save_freq": steps, "keep_checkpoints": 1})
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["tracking"]["system_metrics"] = on
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(root / "params.yaml")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    t0, c0 = time.perf_counter(), time.process_time()
    summary = train_local(params, "icpo", root=root, reward_fn=parity_reward, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    client = MlflowClient(uri)
    metrics = client.get_run(summary["mlflow_run_id"]).data.metrics
    samples = 0
    if "system/cpu_utilization_percentage" in metrics:
        samples = len(
            client.get_metric_history(summary["mlflow_run_id"], "system/cpu_utilization_percentage")
        )
    return {
        "step_s": summary["mean_step_time_s"],
        "wall_per_step_s": wall / steps,
        "cpu_per_step_s": cpu / steps,
        "wall_s": wall,
        "system_keys": sum(k.startswith("system/") for k in metrics),
        "system_samples": samples,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="training steps per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting (off and on back to back)")
    ap.add_argument("--interval", type=float, default=None, help="MLflow's sampling interval, seconds")
    ap.add_argument("--json", default=None)
    ap.add_argument("--from-json", default=None, help="summarise the runs of an earlier --json again")
    args = ap.parse_args()
    if args.from_json:
        summarise(json.loads(Path(args.from_json).read_text()))
        return 0
    if args.interval is not None:
        os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = str(args.interval)
    out: dict = {
        "steps": args.steps,
        "repeats": args.repeats,
        "sampling_interval_s": float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", 10)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "load_before": os.getloadavg(),
    }
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        one_run(Path(tmp) / "warmup", uri, 2, False)  # the store's migrations and first imports, not measured
        for i in range(args.repeats):
            for setting in ("off", "on") if i % 2 == 0 else ("on", "off"):
                r = one_run(Path(tmp) / f"{setting}{i}", uri, args.steps, setting == "on")
                results[setting].append(r)
                print(setting, i, {k: round(v, 4) for k, v in r.items()}, flush=True)
    out["runs"] = results
    out["load_after"] = os.getloadavg()
    summarise(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
