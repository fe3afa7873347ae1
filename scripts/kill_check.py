"""Random SIGKILL check: a train + merge pipeline under `dvc repro`, killed at random moments, ends as if never killed.

    python scripts/kill_check.py [--kills 10] [--seed 0] [--steps 6] [--save-freq 2] [--out result.json]

Builds a throw-away DVC project (a tiny random model, tiny synthetic data, this project's `icpo train` / `icpo
merge` commands, the same outs options as dvc.yaml: checkpoints and the step log persisted and not cached), runs
it once uninterrupted (the reference, timed), then for each of ``--kills`` trials: a fresh copy, ``dvc repro``
started in its own process group and the whole group SIGKILLed at a moment drawn uniformly from the reference's
wall time (so kills land in start-up, rollouts, updates, checkpoint writes, MLflow calls and the merge), then
``dvc repro`` again to the end. A trial passes when

- every step is in the step log exactly once and in MLflow exactly once (``perf/step_time_s`` history);
- the step log equals the reference's (timings aside) and the merged weights equal the reference's bit for bit
  (the local engine is deterministic on CPU);
- a further ``dvc status`` reports nothing to do.

Prints one JSON object (per trial: the kill moment, what had been done by then, pass/fail and why) and exits 1 if
any trial failed. MLflow is each project's own SQLite store; the rollouts use the hf backend (no vLLM start-up).
"""

from __future__ import annotations

import argparse
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
"""


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
    from icpo_core.engines.local.tiny import make_tiny_project

    root = make_tiny_project(folder, train={"steps": steps, "save_freq": save_freq, "keep_checkpoints": 1})
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
    from icpo_core.engines.local import checkpoint as ckpt
    from icpo_core.engines.local import steplog

    return {
        "logged_steps": len(steplog.read_steps(root / "metrics/steps_icpo.jsonl")),
        "checkpoint": ckpt.latest_step(root / "runs/icpo/checkpoints"),
        "merged": (root / "runs/icpo/merged/config.json").is_file(),
    }


def _comparable(root: Path) -> list[dict]:
    from icpo_core.engines.local import steplog

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
        rc, ref_wall = repro(ref, work / "reference.log")
        if rc != 0:
            print((work / "reference.log").read_text()[-3000:], file=sys.stderr)
            return 1
        trials = []
        for i in range(args.kills):
            root = work / f"trial_{i}"
            shutil.copytree(template, root)
            log = work / f"trial_{i}.log"
            kill_at = round(rng.uniform(0.0, ref_wall), 2)
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
            "passed": sum(t["passed"] for t in trials),
            "killed_before_the_end": len(killed),
            "killed_during": {
                "start_up (no step logged)": sum(t["at_kill"]["logged_steps"] == 0 for t in killed),
                "training (steps logged, not all)": sum(
                    0 < t["at_kill"]["logged_steps"] < args.steps for t in killed
                ),
                "after the last step (final checkpoint, MLflow, summary, merge)": sum(
                    t["at_kill"]["logged_steps"] == args.steps for t in killed
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
