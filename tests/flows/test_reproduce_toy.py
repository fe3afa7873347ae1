"""The reproduce flow on toy pipelines of `python -c` stages: order, streaming, tags, failure and recovery."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

# base_model -> prepare_train -> report; prepare_demos independent. prepare_train fails while fail.txt exists.
TOY_DVC = """
stages:
  base_model:
    cmd: python -c "open('a.txt', 'w').write('a'); print('made a')"
    params: [seed]
    outs: [a.txt]
  prepare_demos:
    cmd: python -c "open('d.txt', 'w').write('d'); print('made d')"
    outs: [d.txt]
  prepare_train:
    cmd: python step.py
    deps: [a.txt, step.py]
    outs: [b.txt]
  report:
    cmd: python -c "open('r.txt', 'w').write(open('b.txt').read() + 'r')"
    deps: [b.txt]
    outs: [r.txt]
"""

FAILING_STEP = """
import sys
print('loading the training set')
print('boom: the tokenizer file is corrupt', file=sys.stderr)
sys.exit(1)
"""

TAGGING_STEP = """
import json, os
tags = {k: v for k, v in os.environ.items() if k.startswith('ICPO_TAG_') or k == 'MLFLOW_TRACKING_URI'}
open('b.txt', 'w').write(json.dumps(tags, sort_keys=True))
print('made b')
"""


def _run(project: Path, **kwargs):
    from flows.reproduce import reproduce

    return reproduce(project_dir=str(project), return_state=True, **kwargs)


@pytest.mark.timeout(300)
def test_failure_stops_dependants_and_rerun_continues(
    prefect_api, make_project, commit_all, flow_logs, flow_artifacts
):
    project = make_project(TOY_DVC, files={"step.py": FAILING_STEP})

    state = _run(project, download_retries=1, retry_backoff_s=0)
    assert state.is_failed()
    run_id = state.state_details.flow_run_id
    messages = flow_logs(run_id)
    logs = "\n".join(messages)
    # prepare_train is a download stage: retried once; the others are not retried
    assert messages.count("Running stage 'prepare_train':") == 2
    assert messages.count("Running stage 'base_model':") == 1
    # the stage's own output, streamed line by line, and its last lines in the error
    assert "made a" in logs
    assert "boom: the tokenizer file is corrupt" in logs
    assert "stage prepare_train failed (exit 255); last output lines:" in logs
    assert "not running report: upstream stage(s) failed: prepare_train" in logs
    # finished stages keep their outputs; the independent stage still ran; the dependant did not
    assert (project / "a.txt").read_text() == "a"
    assert (project / "d.txt").read_text() == "d"
    assert not (project / "r.txt").exists()
    arts = flow_artifacts(run_id)
    assert {"dvc-plan", "dvc-stage-results"} <= set(arts)
    outcomes = {row["stage"]: row["outcome"] for row in json.loads(arts["dvc-stage-results"].data)}
    assert outcomes == {
        "base_model": "ran",
        "prepare_demos": "ran",
        "prepare_train": "FAILED",
        "report": "not run",
    }

    # fix the stage; the re-run continues from it: base_model and prepare_demos are not touched again
    (project / "step.py").write_text(TAGGING_STEP)
    commit_all(project, "fix step")
    state = _run(project)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["ran"] == ["prepare_train", "report"]
    assert summary["up_to_date"] == ["base_model", "prepare_demos"]
    assert (project / "r.txt").read_text().endswith("r")

    # every stage the flow runs carries the MLflow tags of the flow run
    tags = json.loads((project / "b.txt").read_text())
    assert tags["ICPO_TAG_PREFECT_FLOW_RUN_ID"] == str(state.state_details.flow_run_id)
    assert tags["ICPO_TAG_DVC_EXP"] == "workspace"
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", tags["ICPO_TAG_GIT_COMMIT"])
    assert tags["MLFLOW_TRACKING_URI"] == f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"

    # nothing stale: the third run hands nothing to DVC
    state = _run(project)
    assert state.is_completed()
    assert state.result()["ran"] == []


@pytest.mark.timeout(300)
def test_targets_force_and_overrides(prefect_api, make_project):
    project = make_project(TOY_DVC, files={"step.py": TAGGING_STEP})

    # a target without its upstream: only that stage is planned
    state = _run(project, targets=["prepare_demos"], with_upstream=False)
    assert state.is_completed()
    assert state.result()["ran"] == ["prepare_demos"]
    assert not (project / "a.txt").exists()

    # forced: an up-to-date stage runs again
    state = _run(project, targets=["prepare_demos"], force=True)
    assert state.result()["ran"] == ["prepare_demos"]

    # overrides run as a temp DVC experiment: the workspace params stay as committed
    before = (project / "params.yaml").read_text()
    state = _run(project, targets=["base_model"], overrides=["seed=7"], experiment_name="seed7")
    assert state.is_completed(), state.message
    assert state.result()["mode"] == "experiment"
    assert (project / "params.yaml").read_text() == before
    assert not (project / "a.txt").exists()  # the experiment ran in a scratch copy
    import subprocess
    import sys

    dvc = str(Path(sys.executable).with_name("dvc"))
    exps = subprocess.run([dvc, "exp", "ls", "--name-only"], cwd=project, capture_output=True, text=True)
    assert "seed7" in exps.stdout.split()


def test_unknown_target_is_a_clear_error_and_the_gpu_slot_exists(prefect_api, make_project):
    from prefect.client.orchestration import get_client

    project = make_project(TOY_DVC, files={"step.py": TAGGING_STEP})
    state = _run(project, targets=["no_such_stage"])
    assert state.is_failed()
    assert "no_such_stage" in state.message
    # GPU stages (tag `gpu`) share one slot, created by the flow when the server has none
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("tag:gpu").limit == 1
