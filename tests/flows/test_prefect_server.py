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


def test_study_weekly_overrides_make_valid_params_with_sampled_benchmarks():
    """The weekly study's overrides, applied to params.yaml as `dvc exp run -S` would: valid params, sampled
    avg@4 benchmarks that the registry resolves beside the greedy ones, and the preregistered measure on the
    greedy levels only."""
    from flows.serve import load_deployment_specs
    from icpo_core.bench.registry import resolve_benchmarks
    from icpo_core.config.params import load_params

    spec = next(s for s in load_deployment_specs() if s["name"] == "study-weekly")
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml", spec["parameters"]["overrides"])
    assert params.seeds == list(range(8)) and params.study.ablation_seeds == [0, 1, 2, 3]
    assert params.study.primary.measure == ["synthetic_l0", "synthetic_l1"]
    specs = {s.name: s for s in resolve_benchmarks(params.bench.benchmarks, params)}
    assert set(specs) == {"synthetic_l0", "synthetic_l1", "synthetic_l0_avg4", "synthetic_l1_avg4"}
    assert specs["synthetic_l0_avg4"].sampling.n == 4 and specs["synthetic_l0"].sampling.n == 1
