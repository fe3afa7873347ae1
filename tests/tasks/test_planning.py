"""Planning: DVC's graph in execution order, `dvc status` reasons, and what is handed to DVC."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from icpo_core.errors import UserError
from tasks.planning import dvc_status, is_gpu_stage, make_plan, plan_markdown, stage_graph

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


def test_stage_graph_from_another_directory(toy_project, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # DVC resolves names against the cwd; the plan must not depend on it
    order, upstream = stage_graph(toy_project)
    assert order == ["prep", "train@a", "train@b", "sum"]
    assert upstream["sum"] == ["prep", "train@a", "train@b"]
    order, _ = stage_graph(toy_project, ["train"], with_upstream=False)  # a foreach group
    assert order == ["train@a", "train@b"]
    order, _ = stage_graph(toy_project, ["train@b"])
    assert order == ["prep", "train@b"]
    with pytest.raises(UserError, match="nope"):
        stage_graph(toy_project, ["nope"])


def test_dvc_status_reasons(toy_project):
    stale = dvc_status(toy_project, dvc=str(Path(sys.executable).with_name("dvc")))
    assert set(stale) == {"prep", "train@a", "train@b", "sum"}
    assert "changed outs: x.txt (deleted)" in stale["prep"]
