"""Planning: DVC's graph in execution order, `dvc status` reasons, and what is handed to DVC."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from icpo_core.errors import UserError
from tasks.planning import is_gpu_stage, make_plan, plan_markdown, read_pipeline

ORDER = ["base_model", "prepare_demos", "prepare_train", "train@icpo", "report"]
UPSTREAM = {
    "base_model": [],
    "prepare_demos": [],
    "prepare_train": ["base_model"],
    "train@icpo": ["base_model", "prepare_demos", "prepare_train"],
    "report": ["base_model", "prepare_demos", "prepare_train", "train@icpo"],
}


def test_stale_stage_pulls_in_its_downstream_but_not_independent_stages():
    plan = make_plan(ORDER, UPSTREAM, {"prepare_train": ["changed deps: params.yaml (modified)"]})
    assert plan.to_run == ["prepare_train", "train@icpo", "report"]
    assert plan.up_to_date == ["base_model", "prepare_demos"]


def test_up_to_date_pipeline_runs_nothing_and_force_runs_everything():
    assert make_plan(ORDER, UPSTREAM, {}).to_run == []
    assert make_plan(ORDER, UPSTREAM, {}, force=True).to_run == ORDER


def test_plan_markdown_says_why():
    plan = make_plan(
        ORDER, UPSTREAM, {"prepare_demos": [f"reason {i}" for i in range(6)]}, targets=["report"]
    )
    md = plan_markdown(plan)
    assert "Targets: report" in md
    assert "| 2 | `prepare_demos` | run | reason 0; reason 1; reason 2; reason 3; +2 more |" in md
    assert "| 1 | `base_model` | skip | up to date |" in md
    assert "| 4 | `train@icpo` | check |" in md


def test_gpu_stages():
    assert is_gpu_stage("train@grpo") and is_gpu_stage("bench@icpo") and is_gpu_stage("bench_base")
    assert is_gpu_stage("regime")
    assert not is_gpu_stage("merge@icpo") and not is_gpu_stage("prepare_train") and not is_gpu_stage("report")


@pytest.fixture(scope="module")
def toy_project(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("plan") / "p"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    (project / "params.yaml").write_text("runs: {a: {}, b: {}}\nseed: 0\n")
    (project / "dvc.yaml").write_text(
        textwrap.dedent(
            """
            stages:
              prep:
                cmd: echo x > x.txt
                params: [seed]
                outs: [x.txt]
              train:
                foreach: ${runs}
                do:
                  cmd: cat x.txt > ${key}.txt
                  deps: [x.txt]
                  outs:
                    - ${key}.txt
              sum:
                cmd: cat a.txt b.txt > sum.txt
                deps: [a.txt, b.txt]
                outs: [sum.txt]
            """
        )
    )
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "-q"], cwd=project, check=True)
    return project


def test_pipeline_order_and_targets_from_another_directory(toy_project, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # DVC resolves names against the cwd; the plan must not depend on it
    pipe = read_pipeline(toy_project, status=False)
    assert pipe.order == ["prep", "train@a", "train@b", "sum"]
    assert pipe.upstream["sum"] == ["prep", "train@a", "train@b"]
    assert pipe.stale == {}
    assert read_pipeline(toy_project, ["train"], with_upstream=False).order == [
        "train@a",
        "train@b",
    ]  # a group
    assert read_pipeline(toy_project, ["train@b"]).order == ["prep", "train@b"]
    with pytest.raises(UserError, match="nope"):
        read_pipeline(toy_project, ["nope"])


def test_status_matches_the_dvc_cli(toy_project, monkeypatch, tmp_path):
    cli = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), "status", "--json"],
        cwd=toy_project,
        capture_output=True,
        text=True,
        check=True,
    )
    monkeypatch.chdir(tmp_path)
    stale = read_pipeline(toy_project).stale
    assert set(stale) == set(json.loads(cli.stdout)) == {"prep", "train@a", "train@b", "sum"}
    assert "changed outs: x.txt (deleted)" in stale["prep"]
    assert "changed deps: params.yaml (new)" in stale["prep"]
    # a changed param is named (record prep as done, then change its param)
    dvc = str(Path(sys.executable).with_name("dvc"))
    params = toy_project / "params.yaml"
    original = params.read_text()
    try:
        (toy_project / "x.txt").write_text("x\n")
        subprocess.run([dvc, "commit", "-f", "-q", "prep"], cwd=toy_project, check=True)
        assert "prep" not in read_pipeline(toy_project, ["prep"]).stale
        params.write_text(original.replace("seed: 0", "seed: 1"))
        assert read_pipeline(toy_project, ["prep"]).stale["prep"] == [
            "changed deps: params.yaml (seed modified)"
        ]
    finally:
        params.write_text(original)
