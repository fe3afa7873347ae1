"""verl end to end on CPU, through the project's real DVC stages: ``train@<run>-0`` runs verl's
``RayPPOTrainer.fit`` (local Ray, FSDP2 actor + reference with the project's loss, vLLM-CPU in verl's hybrid mode
with the weights pushed after every update, verl's old / reference log-probs and checkpoint manager, MLflow and
the step log), then ``merge@icpo-0`` on the real verl checkpoint and ``bench@icpo-0`` on the merged model.

- GRPO: 2 steps, one launch.
- ICPO: 2 steps, killed with SIGKILL of its whole process group (dvc, the launcher, Ray, vLLM) right after the
  step-1 checkpoint, then ``dvc repro`` again: the rerun resumes at step 2, so every step is logged exactly once
  (in verl's per-launch step logs, the merged step log and MLflow), and nothing of the killed run is left running.

No stand-in for verl, Ray or vLLM. The model is a random head_dim-64 Llama (vLLM-CPU's attention refuses
smaller heads); sizes are the smallest that run every piece (2 prompts x 4 rollouts x 8 tokens).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from icpo_core.engines.verl.tiny import MARK_VAR

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
STEPS = 2


def _project(root: Path) -> Path:
    from icpo_core.engines.verl.tiny import make_tiny_verl_project

    overrides = {
        "study": {"runs": ["grpo", "icpo"], "ablations": [], "primary": None},
        "train": {
            "steps": STEPS,
            # the weight push: the random model earns no reward, so an entropy bonus moves the weights at every
            # update, and vLLM returns its log-probs so that verl compares them with the actor's
            # (training/rollout_probs_diff_*): stale weights in vLLM show up there
            "verl": {
                "extra_overrides": [
                    "actor_rollout_ref.actor.entropy_coeff=0.05",
                    "actor_rollout_ref.rollout.calculate_log_probs=true",
                ]
            },
        },
        "bench": {"backend": "hf", "benchmarks": ["synthetic_l0"], "max_tokens": 6, "grade_workers": 1},
        "tracking": {"experiment": "icpo-verl-e2e"},
    }
    make_tiny_verl_project(root, REPO / "params.yaml", overrides=overrides, dvc_yaml=REPO / "dvc.yaml")
    (root / "data/eval").mkdir()
    with (root / "data/eval/synthetic_l0.jsonl").open("w") as f:
        for k in range(3):
            f.write(json.dumps({"problem": f"What is {k} + 1?", "answer": str(k + 1), "solution": ""}) + "\n")
    return root


def _env(mark: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ICPO_", "RAY_"))}
    path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return {
        **env,
        "PYTHONPATH": path,
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        MARK_VAR: mark,
    }


def _repro(root: Path, stage: str, env: dict[str, str], log: Path) -> int:
    with log.open("a") as out:
        return subprocess.run(
            [str(BIN / "dvc"), "repro", "-s", stage], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
            timeout=900,
        ).returncode  # fmt: skip


def _gone(mark: str, pgid: int | None = None) -> bool:
    """True once no process started by this test is left (the marker is in every descendant's environment) and,
    with ``pgid``, none of that process group, not even one still exiting."""
    from icpo_core.engines.verl.tiny import wait_gone

    return wait_gone(mark, timeout_s=60.0, pgid=pgid)


def _launch_steps(root: Path, instance: str) -> list[list[int]]:
    """The steps of each verl launch's own step log, in launch order."""
    from icpo_core.engines.verl.preflight import steps_done

    return [steps_done([f]) for f in sorted((root / f"runs/{instance}/verl_metrics").glob("*.jsonl"))]


def _steps(root: Path, instance: str) -> list[int]:
    path = root / f"metrics/steps_{instance}.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _mlflow_steps(root: Path, instance: str, key: str = "actor/pg_loss") -> list[int]:
    from mlflow.tracking import MlflowClient

    info = json.loads((root / f"runs/{instance}/checkpoints/mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    return sorted(m.step for m in client.get_metric_history(info["run_id"], key))


def _max_prob_change(root: Path, instance: str) -> float:
    """How far step 1's update moved token probabilities: the largest |p_step1 - p_base| of the tokens of the
    training prompts (teacher-forced), step 1's checkpoint merged with the project's merger."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icpo_core.engines.local.merger import merge_checkpoint

    merged = root / f"runs/{instance}/step1_probe"
    merge_checkpoint(root / f"runs/{instance}/checkpoints/global_step_1/actor", merged)
    tok = AutoTokenizer.from_pretrained(root / "models/base")
    rows = pq.read_table(root / "data/train.parquet").to_pylist()[:4]
    texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]

    def probs(folder: Path) -> list[torch.Tensor]:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        out = []
        with torch.no_grad():
            for t in texts:
                ids = tok(t, return_tensors="pt").input_ids
                lp = model(ids).logits[0, :-1].log_softmax(-1)
                out.append(lp.gather(-1, ids[0, 1:, None]).exp().squeeze(-1))
        return out

    return max(
        (a - b).abs().max().item() for a, b in zip(probs(merged), probs(root / "models/base"), strict=True)
    )


@pytest.mark.timeout(1800)
def test_verl_fit_on_cpu_grpo_icpo_kill_resume_merge_bench_report(tmp_path):
    root = _project(tmp_path / "p")
    mark = uuid.uuid4().hex
    env, log = _env(mark), tmp_path / "dvc.log"

    # GRPO: two steps of RayPPOTrainer.fit, a checkpoint at each
    assert _repro(root, "train@grpo-0", env, log) == 0, log.read_text()[-4000:]
    assert _steps(root, "grpo_s0") == [1, 2]
    assert (root / "runs/grpo_s0/checkpoints/latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert _mlflow_steps(root, "grpo_s0") == [1, 2]
    grpo = [json.loads(x) for x in (root / "metrics/steps_grpo_s0.jsonl").read_text().splitlines()]
    assert all(r["icpo/ief_generated"] == 0 for r in grpo)
    # step 1 changed the weights; step 2's rollouts came from the pushed weights: vLLM's token probabilities
    # equal the actor's (fp32 on both sides) far more closely than the update moved them
    assert grpo[0]["actor/grad_norm"] > 0
    moved = _max_prob_change(root, "grpo_s0")
    assert moved > 1e-3, moved
    assert grpo[1]["training/rollout_probs_diff_max"] < moved / 10, (grpo[1], moved)

    # ICPO: killed (whole process group) right after the step-1 checkpoint
    tracker = root / "runs/icpo_s0/checkpoints/latest_checkpointed_iteration.txt"
    with log.open("a") as out:
        proc = subprocess.Popen(
            [str(BIN / "dvc"), "repro", "-s", "train@icpo-0"], cwd=root, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 900
        while not (tracker.is_file() and tracker.read_text().strip() == "1"):
            assert proc.poll() is None, f"ICPO ended before the kill: {log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "no step-1 checkpoint in 15 minutes"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _gone(mark, proc.pid), "processes of the killed run (Ray, vLLM, dvc) are still running"
    killed = _launch_steps(root, "icpo_s0")
    assert killed == [[1]], killed  # killed before step 2 was logged

    # the rerun resumes at step 2: every step exactly once, in the step logs and in MLflow
    assert _repro(root, "train@icpo-0", env, log) == 0, log.read_text()[-4000:]
    assert _launch_steps(root, "icpo_s0") == [[1], [2]]
    assert _steps(root, "icpo_s0") == [1, 2]
    assert _mlflow_steps(root, "icpo_s0") == [1, 2]
    icpo = [json.loads(x) for x in (root / "metrics/steps_icpo_s0.jsonl").read_text().splitlines()]
    assert all(r["icpo/ief_generated"] == 2 for r in icpo)  # one IEF rollout per prompt, 2 prompts
    assert tracker.read_text().strip() == "2"
    assert _gone(mark), "processes of the finished run are still running"

    # merge the real verl checkpoint, bench the merged model
    assert _repro(root, "merge@icpo-0", env, log) == 0, log.read_text()[-4000:]
    merged = root / "runs/icpo_s0/merged"
    assert (merged / "config.json").is_file()
    assert _repro(root, "bench@icpo-0", env, log) == 0, log.read_text()[-4000:]
    bench = json.loads((root / "metrics/bench_icpo_s0.json").read_text())
    assert bench, bench

    # and the comparison: GRPO's merged model and the base benched, the report over both verl runs
    for stage in ("merge@grpo-0", "bench@grpo-0", "bench_base", "report"):
        assert _repro(root, stage, env, log) == 0, log.read_text()[-4000:]
    report = (root / "reports/report.md").read_text()
    assert "grpo" in report and "icpo" in report, report[:2000]
