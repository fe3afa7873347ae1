"""Orchestration overhead: the reproduce flow vs plain `dvc repro` on the same up-to-date pipeline.

    python scripts/bench_orchestration.py [--repeats 3] [--targets base_model prepare_train prepare_demos]

Builds a throw-away copy of this project (its dvc.yaml and params.yaml; a tiny random model as
``model.source: local``, tiny synthetic data), runs the targets once so they are up to date, then times, as
whole processes (what a user waits for), each repeated:

- ``dvc repro <targets>``: DVC checks every stage and runs nothing;
- ``python -m flows.reproduce <targets>`` against a running local Prefect server (``PREFECT_API_URL`` set);
- the same with no server configured: Prefect starts a temporary one inside the process (the default when
  someone just runs the module), with an existing database.

Prints one JSON object: per mode the wall times and their median, and the flow's added seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))


def make_project(base: Path) -> Path:
    from icpo_core.config import deep_merge
    from icpo_core.models.tiny import write_tiny_model

    tiny = write_tiny_model(base / "tiny-model")
    project = base / "project"
    project.mkdir()
    params = deep_merge(
        yaml.safe_load((ROOT / "params.yaml").read_text()),
        {
            "model": {"source": "local", "name": str(tiny)},
            "data": {
                "synthetic": {"levels": [0], "train_per_level": 8, "demos_per_level": 4, "eval_per_level": 4}
            },
        },
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], cwd=project, check=True)
    return project


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("prefect server did not start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--targets", nargs="+", default=["base_model", "prepare_train", "prepare_demos"])
    args = p.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="icpo-bench-orch-"))
    home = base / "prefect-home"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_HOME": str(home),
        "PREFECT_MEMO_STORE_PATH": str(home / "memo_store.toml"),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("PREFECT_API_URL", None)
    project = make_project(base)
    dvc_cmd = [str(BIN / "dvc"), "repro", *args.targets]
    flow_cmd = [sys.executable, "-m", "flows.reproduce", *args.targets, "--project-dir", str(project)]
    flow_env = {**env, "PYTHONPATH": str(ROOT)}
    results: dict[str, object] = {"targets": args.targets}
    server = None
    try:
        results["first_run_s"] = round(timed(dvc_cmd, project, env), 2)  # brings the targets up to date
        # warm-ups: a first `dvc repro` no-op, and the flow once (creates the Prefect DB and MLflow store)
        timed(dvc_cmd, project, env)
        timed(flow_cmd, ROOT, flow_env)
        modes: dict[str, list[float]] = {
            "dvc_repro": [],
            "flow_ephemeral_server": [],
            "flow_running_server": [],
        }
        server, url = start_server(env)
        for _ in range(args.repeats):
            modes["dvc_repro"].append(timed(dvc_cmd, project, env))
            modes["flow_running_server"].append(timed(flow_cmd, ROOT, {**flow_env, "PREFECT_API_URL": url}))
            modes["flow_ephemeral_server"].append(timed(flow_cmd, ROOT, flow_env))
        medians = {m: round(statistics.median(v), 2) for m, v in modes.items()}
        results["runs_s"] = {m: [round(x, 2) for x in v] for m, v in modes.items()}
        results["median_s"] = medians
        results["added_s"] = {
            "running_server": round(medians["flow_running_server"] - medians["dvc_repro"], 2),
            "ephemeral_server": round(medians["flow_ephemeral_server"] - medians["dvc_repro"], 2),
        }
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
