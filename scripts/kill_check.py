"""Random SIGKILL check: a train + merge + bench pipeline under `dvc repro`, killed at random moments, ends as if
never killed.

    python scripts/kill_check.py [--kills 10] [--seed 0] [--steps 6] [--save-freq 2] [--window all|bench]
                                 [--out result.json]

Builds a throw-away DVC project (a tiny random model, tiny synthetic data, this project's `icpo train` / `icpo
merge` / `icpo bench` commands, the same outs options as dvc.yaml: checkpoints and the step log persisted and not
cached, the bench samples persisted), runs it once uninterrupted (the reference, timed), then for each of
``--kills`` trials: a fresh copy, ``dvc repro`` started in its own process group and the whole group SIGKILLed at
a moment drawn uniformly from the reference's wall time (so kills land in start-up, rollouts, updates, checkpoint
writes, MLflow calls, the merge and the bench), then ``dvc repro`` again to the end (``--window bench``: the moment is drawn from the reference's bench stage
only, from the merged model's write to the end, so that every kill lands in the bench). A trial passes when

- every step is in the step log exactly once and in MLflow exactly once (``perf/step_time_s`` history);
- the step log equals the reference's (timings aside) and the merged weights equal the reference's bit for bit
  (the local engine is deterministic on CPU);
- every bench sample is in ``bench/icpo/samples.jsonl`` exactly once and equal to the reference's (greedy
  decoding), the metrics file is whole and its scores equal the reference's, and each bench metric is in
  MLflow once;
- a further ``dvc status`` reports nothing to do.

Prints one JSON object (per trial: the kill moment, what had been done by then, pass/fail and why) and exits 1 if
any trial failed. MLflow is each project's own SQLite store; the rollouts use the hf backend (no vLLM start-up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DVC_YAML = """stages:
  train:
    cmd: icpo train --run icpo --no-progress
    deps: [models/base, data/train.parquet, data/demos.parquet]
    params: [train, algorithm, runs]
    outs:
      - runs/icpo/checkpoints:
          persist: true
          cache: false
      - metrics/steps_icpo.jsonl:
          persist: true
          cache: false
    metrics:
      - metrics/train_icpo.json:
          cache: false
  merge:
    cmd: icpo merge --run icpo
    deps: [runs/icpo/checkpoints]
    outs:
      - runs/icpo/merged:
          cache: false
  bench:
    cmd: icpo bench --run icpo
    deps: [runs/icpo/merged, data/eval, icpo_core/bench/benchmarks.yaml]
    params: [bench]
    outs:
      - bench/icpo:
          persist: true
    metrics:
      - metrics/bench_icpo.json:
          cache: false
"""
BENCH = {
    "backend": "hf",
    "benchmarks": ["synthetic_l0"],
    "max_tokens": 8,
    "grade_workers": 1,
    "batch_size": 4,
}
N_EVAL = 16  # held-out problems: 4 chunks of 4, so a kill can land between chunks


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ICPO_"))}
    bindir = str(Path(sys.executable).parent)
    env.update(
        TOKENIZERS_PARALLELISM="false",
        DVC_NO_ANALYTICS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PATH=os.pathsep.join([bindir, env.get("PATH", "")]),
    )
    return env


def make_project(folder: Path, steps: int, save_freq: int) -> Path:
    import yaml

    from icpo_core.data.schema import write_eval_jsonl
    from icpo_core.engines.local.tiny import make_tiny_project

    root = make_tiny_project(folder, train={"steps": steps, "save_freq": save_freq, "keep_checkpoints": 1})
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["bench"] = BENCH
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rows = [
        {"problem": f"Ann has {i + 2} pens and gets {i % 3 + 1} more. How many pens?", "answer": str(2 * i % 3 + i + 3),
         "solution": ""}
        for i in range(N_EVAL)
    ]  # fmt: skip
    (root / "data/eval").mkdir(parents=True)
    write_eval_jsonl(rows, root / "data/eval/synthetic_l0.jsonl")
    registry = root / "icpo_core/bench/benchmarks.yaml"
    registry.parent.mkdir(parents=True)
    shutil.copy(ROOT / "icpo_core/bench/benchmarks.yaml", registry)
    (root / "dvc.yaml").write_text(DVC_YAML)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, env=_env(), check=True)
    return root


def repro(root: Path, log: Path, kill_after: float | None = None) -> tuple[int | None, float]:
    """``dvc repro`` in its own process group; SIGKILL the group after ``kill_after`` s (None: run to the end)."""
    t0 = time.monotonic()
    with log.open("a") as out:
        proc = subprocess.Popen(
            ["dvc", "repro"],
            cwd=root,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=kill_after if kill_after is not None else 900)
        except subprocess.TimeoutExpired:
            if kill_after is None:
                raise
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _reap(proc.pid)
            return None, time.monotonic() - t0
    return proc.returncode, time.monotonic() - t0


def _reap(pgid: int) -> None:
    """Wait until no process of the killed group is left (grader workers die with it)."""
    for _ in range(100):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def state(root: Path) -> dict:
    """What the project holds: steps in the log, the latest checkpoint, a merged model."""
    from icpo_core import checkpoint_layout as layout
    from icpo_core import steplog

    return {
        "logged_steps": len(steplog.read_steps(root / "metrics/steps_icpo.jsonl")),
        "checkpoint": layout.latest_step(root / "runs/icpo/checkpoints"),
        "merged": (root / "runs/icpo/merged/config.json").is_file(),
        "bench_samples": len(_samples(root)),
        "bench_metrics": (root / "metrics/bench_icpo.json").is_file(),
    }


def _samples(root: Path) -> list[dict]:
    path = root / "bench/icpo/samples.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(
            json.JSONDecodeError
        ):  # a line cut by the kill (the rerun redoes its problem)
            rows.append(json.loads(line))
    return rows


_SAMPLE_KEYS = ("benchmark", "problem_id", "sample", "response", "extracted", "correct")


def _bench_problems(root: Path, ref: Path) -> list[str]:
    """Why the bench outputs differ from the reference's (empty: they do not)."""
    problems = []
    rows = _samples(root)
    keys = [(r["benchmark"], r["problem_id"], r["sample"]) for r in rows]
    if len(set(keys)) != len(keys):
        problems.append(f"bench: {len(keys) - len(set(keys))} samples counted twice")
    ref_rows = sorted(tuple(r[k] for k in _SAMPLE_KEYS) for r in _samples(ref))
    if sorted(tuple(r[k] for k in _SAMPLE_KEYS) for r in rows) != ref_rows:
        problems.append(f"bench: samples differ from the reference ({len(rows)} vs {len(ref_rows)} rows)")
    try:
        metrics = json.loads((root / "metrics/bench_icpo.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [*problems, f"bench metrics unreadable: {e}"]
    ref_metrics = json.loads((ref / "metrics/bench_icpo.json").read_text())
    if metrics["benchmarks"] != ref_metrics["benchmarks"] or metrics["average"] != ref_metrics["average"]:
        problems.append("bench metrics differ from the reference")
    return problems


def _comparable(root: Path) -> list[dict]:
    from icpo_core import steplog

    rows = steplog.read_steps(root / "metrics/steps_icpo.jsonl")
    return [{k: v for k, v in r.items() if not k.startswith(("perf/", "timing/"))} for r in rows]


def _weights(root: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted((root / "runs/icpo/merged").glob("*.safetensors")):
        out.update(load_file(f))
    return out


def check(root: Path, ref: Path, steps: int) -> list[str]:
    """Why ``root`` differs from the uninterrupted reference (empty: it does not)."""
    import torch
    from mlflow.tracking import MlflowClient

    from icpo_core import tracking

    problems = []
    logged = [r["step"] for r in _comparable(root)]
    if logged != list(range(1, steps + 1)):
        problems.append(f"step log has steps {logged}")
    elif _comparable(root) != _comparable(ref):
        problems.append("step log differs from the reference")
    summary = json.loads((root / "metrics/train_icpo.json").read_text())
    client = MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    mlflow_steps = sorted(
        m.step for m in client.get_metric_history(summary["mlflow_run_id"], tracking.STEP_KEY)
    )
    if mlflow_steps != list(range(1, steps + 1)):
        problems.append(f"MLflow has steps {mlflow_steps}")
    for key in ("bench/average/avg_at_n", "bench/synthetic_l0/avg_at_n"):
        n = len(client.get_metric_history(summary["mlflow_run_id"], key))
        if n != 1:
            problems.append(f"MLflow has {key} {n} times")
    problems += _bench_problems(root, ref)
    wa, wb = _weights(ref), _weights(root)
    if not wb or set(wa) != set(wb) or not all(torch.equal(wa[k], wb[k]) for k in wa):
        problems.append("merged weights differ from the reference")
    status = subprocess.run(["dvc", "status"], cwd=root, env=_env(), capture_output=True, text=True)
    if status.returncode or "up to date" not in status.stdout:
        problems.append(f"dvc status not clean: {status.stdout.strip()[:300]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--save-freq", type=int, default=2)
    ap.add_argument(
        "--window",
        choices=["all", "bench"],
        default="all",
        help="draw kill moments from the whole run or the bench",
    )
    ap.add_argument(
        "--workdir", type=Path, default=None, help="keep the projects here (default: a temp folder)"
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="icpo-kill-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        template = make_project(work / "template", args.steps, args.save_freq)
        ref = work / "reference"
        shutil.copytree(template, ref)
        started = time.time()
        rc, ref_wall = repro(ref, work / "reference.log")
        # the bench stage starts right after the merge wrote the merged model
        bench_from = (ref / "runs/icpo/merged").stat().st_mtime - started  # the folder: its files are links
        window = (bench_from, ref_wall) if args.window == "bench" else (0.0, ref_wall)
        if rc != 0:
            print((work / "reference.log").read_text()[-3000:], file=sys.stderr)
            return 1
        trials = []
        for i in range(args.kills):
            root = work / f"trial_{i}"
            shutil.copytree(template, root)
            log = work / f"trial_{i}.log"
            kill_at = round(rng.uniform(*window), 2)
            rc, _ = repro(root, log, kill_after=kill_at)
            at_kill = state(root)
            rc2, _ = repro(root, log)
            problems = [f"rerun exited {rc2}"] if rc2 != 0 else check(root, ref, args.steps)
            trials.append(
                {
                    "kill_at_s": kill_at,
                    "killed": rc is None,
                    "at_kill": at_kill,
                    "passed": not problems,
                    "problems": problems,
                }
            )
            print(json.dumps({"trial": i, **trials[-1]}), file=sys.stderr, flush=True)
            if not problems:
                shutil.rmtree(root, ignore_errors=True)
        killed = [t for t in trials if t["killed"]]
        result = {
            "kills": args.kills,
            "seed": args.seed,
            "steps": args.steps,
            "save_freq": args.save_freq,
            "reference_wall_s": round(ref_wall, 1),
            "reference_bench_from_s": round(bench_from, 1),
            "window": args.window,
            "passed": sum(t["passed"] for t in trials),
            "killed_before_the_end": len(killed),
            "killed_during": {
                "start_up (no step logged)": sum(t["at_kill"]["logged_steps"] == 0 for t in killed),
                "training (steps logged, not all)": sum(
                    0 < t["at_kill"]["logged_steps"] < args.steps for t in killed
                ),
                "after the last step, no bench sample yet (final checkpoint, MLflow, summary, merge, bench start-up)": sum(
                    t["at_kill"]["logged_steps"] == args.steps and not t["at_kill"]["bench_samples"]
                    for t in killed
                ),
                "bench (samples written, metrics not yet)": sum(
                    t["at_kill"]["bench_samples"] > 0 and not t["at_kill"]["bench_metrics"] for t in killed
                ),
                "bench metrics written (MLflow log, DVC's record)": sum(
                    t["at_kill"]["bench_metrics"] for t in killed
                ),
            },
            "trials": trials,
        }
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return 0 if result["passed"] == args.kills else 1
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
