"""End-to-end check of the checked-in deployments against a REAL local Prefect server.

    python scripts/prefect_server_check.py            # prints a JSON summary; exit 0 when every check passed

1. start `prefect server start` on 127.0.0.1 (a free port, a throw-away PREFECT_HOME, telemetry off, the
   scheduler polling every 2 s instead of 60 s);
2. create the process work pool prefect.yaml names, and `prefect deploy --all` from the checkout root;
3. confirm every deployment with a cron schedule exists with that schedule, its concurrency limit of 1 and its
   work pool, and that the scheduler created SCHEDULED flow runs for it at the cron's times;
4. shut the server down (its whole process group), whatever happened.

The test suite runs this (tests/flows/test_prefect_server.py); nothing here is mocked.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout_s:.0f} s")


def _prefect(env: dict[str, str], *args: str, timeout_s: float = 180) -> str:
    proc = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`prefect {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


def check_deployments(api_url: str, specs: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    """Read the deployments back and wait for the scheduler's SCHEDULED runs of each cron deployment."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.server.schemas.schedules import CronSchedule

    out: dict[str, Any] = {}
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        for spec in specs:
            name = spec["name"]
            dep = deployments.get(name)
            if dep is None:
                raise AssertionError(f"deployment {name} missing after `prefect deploy --all`")
            crons = [s.schedule.cron for s in dep.schedules]
            want = [s["cron"] for s in spec.get("schedules") or []]
            if crons != want:
                raise AssertionError(f"{name}: schedules {crons} != prefect.yaml {want}")
            limit = dep.global_concurrency_limit.limit if dep.global_concurrency_limit else None
            if limit != 1:
                raise AssertionError(f"{name}: concurrency limit {limit} != 1")
            if dep.work_pool_name != spec["work_pool"]["name"]:
                raise AssertionError(f"{name}: work pool {dep.work_pool_name}")
            if dep.parameters != (spec.get("parameters") or {}):
                raise AssertionError(f"{name}: parameters {dep.parameters}")
            # no pull section in prefect.yaml: the worker must run the flow in the checkout deploy ran from
            workdirs = [
                step["prefect.deployments.steps.set_working_directory"]["directory"]
                for step in dep.pull_steps or []
                if "prefect.deployments.steps.set_working_directory" in step
            ]
            if workdirs != [str(ROOT)]:
                raise AssertionError(
                    f"{name}: pull steps {dep.pull_steps} do not set the checkout as working dir"
                )
            info: dict[str, Any] = {"schedules": crons, "concurrency_limit": limit}
            if want:
                start = time.monotonic()
                runs = []
                while time.monotonic() - start < timeout_s:
                    runs = client.read_flow_runs(
                        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                        flow_run_filter=FlowRunFilter(
                            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                        ),
                    )
                    if runs:
                        break
                    time.sleep(1)
                if not runs:
                    raise AssertionError(f"{name}: no scheduled runs after {timeout_s:.0f} s")
                times = sorted(r.expected_start_time.astimezone(UTC) for r in runs)
                # the runs are exactly the cron's next consecutive times
                cron = CronSchedule(cron=want[0], timezone=spec["schedules"][0].get("timezone", "UTC"))
                expected = asyncio.run(cron.get_dates(n=len(times), start=times[0] - timedelta(seconds=1)))
                if [e.astimezone(UTC) for e in expected] != times:
                    raise AssertionError(
                        f"{name}: scheduled runs {times} are not the times of cron {want[0]}"
                    )
                info.update(scheduled_runs=len(runs), first_run=times[0].isoformat())
            out[name] = info
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--startup-timeout", type=float, default=180)
    p.add_argument("--schedule-timeout", type=float, default=90)
    args = p.parse_args(argv)

    specs = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    pools = sorted({s["work_pool"]["name"] for s in specs})
    home = tempfile.mkdtemp(prefix="icpo-prefect-check-")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": home,
        "PREFECT_MEMO_STORE_PATH": str(Path(home) / "memo_store.toml"),
        "PREFECT_LOCAL_STORAGE_PATH": str(Path(home) / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_API_URL": api_url,
    }
    summary: dict[str, Any] = {"port": port}
    t0 = time.monotonic()
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        summary["server_start_s"] = round(wait_healthy(api_url, server, args.startup_timeout), 1)
        for pool in pools:
            _prefect(env, "work-pool", "create", pool, "--type", "process", "--overwrite")
        t = time.monotonic()
        _prefect(env, "deploy", "--all")
        summary["deploy_s"] = round(time.monotonic() - t, 1)
        os.environ.update({k: env[k] for k in ("PREFECT_API_URL", "PREFECT_HOME")})
        summary["deployments"] = check_deployments(api_url, specs, args.schedule_timeout)
        summary["ok"] = True
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        summary["server_stopped"] = server.returncode is not None
        summary["total_s"] = round(time.monotonic() - t0, 1)
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
