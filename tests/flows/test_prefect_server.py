"""A real local Prefect server: deploy prefect.yaml, see the cron schedules create runs, shut it down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_prefect_yaml_deploys_and_schedules_runs_on_a_real_server():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "prefect_server_check.py")],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["ok"] and summary["server_stopped"]
    specs = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert {"bench-nightly", "reproduce-weekly"} <= set(summary["deployments"])
    for name, info in summary["deployments"].items():
        assert info["concurrency_limit"] == 1
        if specs[name].get("schedules"):
            assert info["scheduled_runs"] >= 1
    # nightly at 02:00 UTC, weekly on Sunday 04:00 UTC
    assert summary["deployments"]["bench-nightly"]["first_run"].endswith("T02:00:00+00:00")
    assert summary["deployments"]["reproduce-weekly"]["first_run"].endswith("T04:00:00+00:00")


def test_serve_entry_point_builds_the_same_deployments():
    from flows.serve import load_deployment_specs, to_runner_deployment

    specs = load_deployment_specs()
    deployments = {d.name: d for d in map(to_runner_deployment, specs)}
    assert set(deployments) == {"bench-nightly", "reproduce-weekly", "study-weekly", "ablations"}
    nightly = deployments["bench-nightly"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.parameters == {
        "targets": ["bench_base", "bench", "bench_ablation", "report"],
        "with_upstream": False,
    }
    assert nightly.concurrency_limit == 1
    assert [s.schedule.cron for s in deployments["reproduce-weekly"].schedules] == ["0 4 * * 0"]
    assert deployments["ablations"].entrypoint.endswith("flows/ablations.py:ablations")
    study = deployments["study-weekly"]
    assert [s.schedule.cron for s in study.schedules] == ["0 4 * * 3"]
    assert "seeds=[0,1,2,3,4,5,6,7]" in study.parameters["overrides"]
