"""The ablation flow: variants as temp DVC experiments under one MLflow parent run; a failure does not stop it."""

from __future__ import annotations

import re

import pytest

# One toy "training" stage per params.yaml run. Like a real stage it logs one MLflow run, following the tracking
# contract: ICPO_TAG_<NAME> -> tag <name>, nested under ICPO_MLFLOW_PARENT_RUN_ID. seed 13 makes it crash.
TOY_DVC = """
stages:
  train:
    foreach: ${runs}
    do:
      cmd: python toy_train.py ${key}
      deps: [toy_train.py]
      params:
        - seed
        - runs.${key}
      outs:
        - out_${key}.txt
"""

TOY_TRAIN = """
import os, sys
import yaml
run = sys.argv[1]
seed = yaml.safe_load(open('params.yaml'))['seed']
print(f'training {run} with seed {seed}')
if seed == 13:
    sys.exit('diverged: loss is nan')
from mlflow.tracking import MlflowClient
client = MlflowClient(os.environ['MLFLOW_TRACKING_URI'])
exp = client.get_experiment_by_name('icpo-repro')
tags = {k[len('ICPO_TAG_'):].lower(): v for k, v in os.environ.items() if k.startswith('ICPO_TAG_')}
tags['mlflow.parentRunId'] = os.environ['ICPO_MLFLOW_PARENT_RUN_ID']
tags['icpo.run'] = run
r = client.create_run(exp.experiment_id, run_name=run, tags=tags)
client.log_metric(r.info.run_id, 'reward/overall', 0.5)
client.set_terminated(r.info.run_id)
open(f'out_{run}.txt', 'w').write(str(seed))
"""


@pytest.mark.timeout(300)
def test_two_variants_one_parent_and_a_failure_reported(prefect_api, make_project, flow_artifacts):
    from flows.ablations import Variant, ablations
    from tasks.mlflow_runs import child_runs, find_runs, tracking_settings

    project = make_project(TOY_DVC, files={"toy_train.py": TOY_TRAIN})
    variants = [
        Variant(name="grpo", targets=["train@grpo"]),
        Variant(name="broken", targets=["train@grpo"], overrides=["seed=13"]),
        Variant(name="icpo-s1", targets=["train@icpo"], overrides=["seed=1"]),
    ]
    state = ablations(variants=variants, project_dir=str(project), return_state=True)

    # the broken variant fails the flow at the end, but only after the one behind it ran
    assert state.is_failed()
    assert "1 of 3 variant(s) failed: broken" in state.message
    settings = tracking_settings(project)
    parents = find_runs(settings, "tags.`icpo.kind` = 'ablation_parent'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent["status"] == "FAILED"
    assert parent["tag:ablation.failed"] == "broken"

    children = sorted(child_runs(settings, parent["run_id"]), key=lambda r: r["name"])
    assert [c["name"] for c in children] == ["grpo", "icpo"]
    flow_run_id = str(state.state_details.flow_run_id)
    for child, variant in zip(children, ["grpo", "icpo-s1"], strict=True):
        assert child["tag:ablation"] == variant
        assert child["tag:dvc_exp"] == f"{variant}-{flow_run_id[:8]}"
        assert child["tag:prefect_flow_run_id"] == flow_run_id
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", child["tag:git_commit"])

    # variants ran as temp experiments: the workspace got no outputs and params.yaml no overrides
    assert not list(project.glob("out_*.txt"))
    arts = flow_artifacts(state.state_details.flow_run_id)
    assert {"ablation-summary", "mlflow-runs"} <= set(arts)
    assert "icpo" in arts["mlflow-runs"].data


def test_default_grid_covers_the_paper_ablations():
    from flows.ablations import default_grid

    names = [v.name for v in default_grid()]
    assert names == ["grpo", "icpo", "icpo_rs", "icpo_no_errs", "icpo_released", "grpo_released"]
    seeded = default_grid(["grpo"], seeds=[0, 1])
    assert [(v.name, v.targets, v.overrides) for v in seeded] == [
        ("grpo-s0", ["bench@grpo-0"], ["seeds=[0]", "study.ablation_seeds=[0]"]),
        ("grpo-s1", ["bench@grpo-1"], ["seeds=[1]", "study.ablation_seeds=[1]"]),
    ]
    assert default_grid(["icpo_rs"])[0].targets == ["bench_ablation@icpo_rs-0"]
