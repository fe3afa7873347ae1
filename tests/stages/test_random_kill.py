"""`icpo train` SIGKILLed (its whole process group) at a random step while that step is in progress, then rerun:
every step is in the step log exactly once, the log equals an uninterrupted run's, and so do the final weights.

The kill step and the moment within it are a seeded draw (``ICPO_KILL_SEED``, default 0; CI runs the default,
``scripts/kill_check.py`` draws many kills over whole ``dvc repro`` runs). The run is ICPO with the random-reward
control (``algorithm.reward: random``, seeded per step): every step has a learning signal on the random tiny model,
so equal final weights show that no step was lost, repeated or trained on other rollouts.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from stage_helpers import env, icpo, reap, step_rows, steps

from icpo_core.engines.local import checkpoint as ckpt
from icpo_core.engines.local.tiny import make_tiny_project

pytestmark = pytest.mark.slow

RUN = "icpo_rand"
# checkpoints at 3 and 5: a kill in step 2 starts over, in 3 redoes two steps, in 4 none, in 5 one
STEPS, SAVE_FREQ = 5, 3
TRAIN = {"steps": STEPS, "save_freq": SAVE_FREQ, "keep_checkpoints": 1, "max_response_length": 16}
# MLflow at an unreachable address: one warning and no MLflow calls (the MLflow side of a kill is covered by
# test_train_merge.py and scripts/kill_check.py), so the three runs take no store migrations
UNREACHABLE_MLFLOW = "http://127.0.0.1:9"


def _project(root: Path) -> Path:
    return make_tiny_project(root, train=TRAIN, runs={RUN: {"n_off": 1, "reward": "random"}})


def _comparable(root: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not k.startswith(("timing/", "perf/step", "perf/tokens_per"))}
        for r in step_rows(root, RUN)
    ]


def _final_weights(root: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_weights(root / f"runs/{RUN}/checkpoints/global_step_{STEPS}/actor")


def test_sigkill_at_a_random_step_in_progress_then_resume(tmp_path):
    rng = random.Random(int(os.environ.get("ICPO_KILL_SEED", "0")))
    kill_step = rng.randint(2, STEPS)  # the step in progress at the kill (one step logged before it at least)
    fraction = rng.uniform(0.1, 0.5)  # how far into it, as a share of the time that step takes
    environ = env(MLFLOW_TRACKING_URI=UNREACHABLE_MLFLOW)

    ref = _project(tmp_path / "ref")
    done = icpo(ref, "train", "--run", RUN, "--no-progress", environ=environ)
    assert done.returncode == 0, done.stderr[-3000:]
    assert steps(ref, RUN) == list(range(1, STEPS + 1))
    step_time = {r["step"]: r["perf/step_time_s"] for r in step_rows(ref, RUN)}

    root = _project(tmp_path / "killed")
    log = tmp_path / "killed.log"
    with log.open("w") as out:  # a file, not a pipe: a full pipe nobody reads would stall the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "icpo_core.cli", "train", "--run", RUN, "--no-progress"],
            cwd=root,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill takes the grader workers too
        )
        try:
            deadline = time.monotonic() + 180
            while len(steps(root, RUN)) < kill_step - 1:  # step kill_step - 1 logged: kill_step starts
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"training ended or stalled before the kill: {log.read_text()[-2000:]}")
                time.sleep(0.005)
            # the step's length: the reference's, or this run's previous step when it went faster (a busy machine)
            mine = {r["step"]: r["perf/step_time_s"] for r in step_rows(root, RUN)}
            length = min(step_time[kill_step], mine.get(kill_step - 1, step_time[kill_step]))
            time.sleep(fraction * length)
        finally:
            with contextlib.suppress(ProcessLookupError):  # (already gone when the test failed above)
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            reap(proc.pid)
    assert steps(root, RUN) == list(range(1, kill_step)), (
        f"the kill was to land in step {kill_step}, {fraction * length:.2f} s into it"
    )

    rerun = icpo(root, "train", "--run", RUN, "--no-progress", environ=environ)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    last_ckpt = (kill_step - 1) // SAVE_FREQ * SAVE_FREQ
    if last_ckpt:
        assert f"resuming from checkpoint step {last_ckpt} of {STEPS}" in rerun.stderr
    assert steps(root, RUN) == list(range(1, STEPS + 1))  # every step exactly once
    assert _comparable(root) == _comparable(ref)  # rewards, acceptance, losses: the same steps
    ref_w, w = _final_weights(ref), _final_weights(root)
    assert set(w) == set(ref_w) and all(torch.equal(w[k], ref_w[k]) for k in ref_w)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(ref / "models/base").state_dict()
    assert any(not torch.equal(base[k], w[k]) for k in base)  # the steps did train: equality is not trivial
