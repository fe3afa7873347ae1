"""The reproduce flow on this project's REAL dvc.yaml and data stages, at a tiny size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from icpo_core.config import deep_merge

ROOT = Path(__file__).resolve().parents[2]
DATA_STAGES = [
    "base_model",
    "prepare_demos",
    "prepare_train",
]  # DAG order (prepare_train needs the tokenizer)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_data_stages_run_then_a_second_run_skips_them(prefect_api, make_project, flow_artifacts, tmp_path):
    from flows.reproduce import reproduce
    from icpo_core.models.tiny import write_tiny_model

    tiny = write_tiny_model(tmp_path / "tiny-model")
    params = deep_merge(
        yaml.safe_load((ROOT / "params.yaml").read_text()),
        {
            "model": {"source": "local", "name": str(tiny)},
            "data": {
                "synthetic": {"levels": [0], "train_per_level": 8, "demos_per_level": 4, "eval_per_level": 4}
            },
        },
    )
    project = make_project((ROOT / "dvc.yaml").read_text(), params_yaml=yaml.safe_dump(params))

    state = reproduce(targets=DATA_STAGES, project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["ran"] == DATA_STAGES
    for path in ["models/base/config.json", "data/train.parquet", "data/eval", "data/demos.parquet"]:
        assert (project / path).exists(), path
    assert json.loads((project / "metrics/prepare_train.json").read_text())["rows_kept"] == 8
    arts = flow_artifacts(state.state_details.flow_run_id)
    assert {"dvc-plan", "dvc-stage-results", "mlflow-runs"} <= set(arts)
    assert "| 1 | `base_model` | run | changed" in arts["dvc-plan"].data
    results = {r["stage"]: r["outcome"] for r in json.loads(arts["dvc-stage-results"].data)}
    assert results == dict.fromkeys(DATA_STAGES, "ran")

    # a report the report stage wrote is published as the comparison table
    (project / "reports").mkdir()
    (project / "reports/table.json").write_text(json.dumps([{"run": "grpo", "avg": 0.1}]))
    (project / "reports/report.md").write_text("# GRPO vs ICPO\n")

    state = reproduce(targets=DATA_STAGES, project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["ran"] == [] and summary["up_to_date"] == DATA_STAGES
    arts = flow_artifacts(state.state_details.flow_run_id)
    assert "| 1 | `base_model` | skip | up to date |" in arts["dvc-plan"].data
    assert json.loads(arts["grpo-vs-icpo-table"].data) == [{"run": "grpo", "avg": 0.1}]
    assert arts["grpo-vs-icpo-report"].data.startswith("# GRPO vs ICPO")
    shutil.rmtree(tiny)
