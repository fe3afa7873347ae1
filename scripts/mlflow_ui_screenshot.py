"""Screenshot of the MLflow UI's runs page of the project's experiment, taken in headless Chromium.

Checks what a trainer sees when opening the tracking store: the experiment opens on its training runs (not on
MLflow 3's GenAI traces page), lists the runs and charts their metrics. The script starts ``mlflow server`` on
127.0.0.1 (a free port) against the store, loads the experiment's page in headless Chromium, writes a PNG and
stops the server.

Usage (from the project root)::

    python scripts/mlflow_ui_screenshot.py                        # the project's store, mlflow/mlflow.db
    python scripts/mlflow_ui_screenshot.py --store sqlite:///path/to/mlflow.db --experiment icpo-repro
    python scripts/mlflow_ui_screenshot.py --view runs --out runs_table.png   # the runs table
    python scripts/mlflow_ui_screenshot.py --view landing       # the bare experiment URL, as a new browser
    python scripts/mlflow_ui_screenshot.py --demo --out docs/img/mlflow_runs.png   # the picture in docs/img

``--demo`` fills a throw-away store (a temporary folder) with two runs, ``grpo`` and ``icpo``, with a few
``reward/on_policy`` steps each, through the project's own MLflow writer (``icpo_core.tracking.Tracker``), so
the picture shows exactly what training writes. ``--view`` picks the page: ``chart`` (default: the runs with
their metric charts), ``runs`` (the runs table) or ``landing`` (the bare experiment URL). Chromium is driven over
its DevTools protocol: the screenshot is taken once the page lists every run of ``--expect-runs`` (default with
``--demo``: grpo, icpo) and, for ``chart``, has drawn a chart (or after ``--page-timeout``); the script exits
with an error when a run is not listed, so ``--view landing --demo`` shows (and fails on) a GenAI landing page.

Where the UI opens: the project tags its experiments ``mlflow.experimentKind=custom_model_development`` (what
the UI itself writes for a "Machine learning" experiment; icpo_core.tracking.ensure_experiment). MLflow 3.17's
UI decides the landing page by its global "GenAI | Model training" switch instead, which a new browser starts on
GenAI: open ``http://127.0.0.1:<port>/#/experiments/<id>/runs?workflowType=machine_learning`` (or click
"Model training" once; the browser remembers it) to land on the runs.

Needs Chromium (Debian: ``apt-get install chromium``; or pass ``--chromium PATH``) and the project's Python
environment (mlflow). Nothing leaves the machine: the server listens on 127.0.0.1 only and Chromium runs with
networking extras (sync, component updates, QUIC) off and a fresh profile folder.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# MLflow 3.17's UI has a global "GenAI | Model training" switch (remembered per browser, GenAI for a new one);
# `workflowType=machine_learning` in the URL selects "Model training", where an experiment opens on its runs.
VIEWS = {
    "landing": "",  # the bare experiment URL: where a new browser lands by itself
    "runs": "/runs?workflowType=machine_learning",  # the runs table
    "chart": "/runs?workflowType=machine_learning&compareRunsMode=CHART",  # the runs' metric charts
    # the saved view `icpo report` writes: runs grouped by variant, charts of the groups (seed mean and band)
    "study": "/runs?workflowType=machine_learning&viewStateShareKey=study&compareRunsMode=CHART",
}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_store(folder: Path, experiment: str, steps: int = 8) -> str:
    """A small real store: runs grpo and icpo with ``reward/on_policy`` curves, written by the project's Tracker."""
    from icpo_core.tracking import Tracker

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    for run, (start, gain) in {"grpo": (0.30, 0.025), "icpo": (0.32, 0.045)}.items():
        tracker = Tracker(uri, experiment, root=folder)
        tags = {
            "icpo.run": run,
            "icpo.method": "grpo" if run == "grpo" else "icpo",
            "icpo.profile": "embedded",
        }
        if not tracker.start(run, tags=tags, params={"algorithm.n_off": "0" if run == "grpo" else "4"}):
            raise SystemExit(f"could not write the demo store at {uri}")
        tracker.log_metrics(
            [
                (step, {"reward/on_policy": round(start + gain * step + 0.02 * math.sin(step), 4)})
                for step in range(1, steps + 1)
            ]
        )
        tracker.finish()
    return uri


def experiment_id(uri: str, name: str) -> str:
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    if exp is None:
        raise SystemExit(f"no experiment {name!r} in {uri}")
    return exp.experiment_id


def start_server(uri: str, port: int, artifacts: Path, log_file: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        artifacts.as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    with log_file.open("wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout_s: float, log_file: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow server exited ({server.returncode}):\n{log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"mlflow server not ready after {timeout_s:.0f} s:\n{log_file.read_text()[-3000:]}")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group (uvicorn / gunicorn workers)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


class Page:
    """One headless Chromium tab driven over the DevTools protocol (wait for the page, then screenshot it)."""

    def __init__(self, chromium: str, url: str, size: str, profile: str, timeout_s: float):
        from websockets.sync.client import connect  # ships with mlflow's server stack (uvicorn)

        port = free_port()
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size}",
            f"--remote-debugging-port={port}",
            "--remote-allow-origins=http://127.0.0.1",
            url,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        ws_url = None
        while ws_url is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise SystemExit(f"chromium did not start its DevTools endpoint ({cmd[0]})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                ws_url = pages[0]["webSocketDebuggerUrl"] if pages else None
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.3)
        self.ws = connect(ws_url, max_size=None, open_timeout=timeout_s)
        self._id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def capture(
    chromium: str, url: str, out: Path, size: str, runs: list[str], chart: bool, timeout_s: float
) -> list[str]:
    """Screenshot ``url`` once every run of ``runs`` is listed (and, with ``chart``, a chart is drawn) or after
    ``timeout_s``; returns the runs the page does not list."""
    check = " && ".join(
        [*(f"document.body.innerText.includes({json.dumps(r)})" for r in runs), "true"]
        + (["document.querySelector('.js-plotly-plot .main-svg') !== null"] if chart else [])
    )
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        page = Page(chromium, url, size, profile, timeout_s)
        try:
            width, height = (int(v) for v in size.split(","))
            page.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            deadline = time.monotonic() + timeout_s
            ready = False
            while not ready and time.monotonic() < deadline:
                time.sleep(1.0)
                ready = bool(page.eval(f"document.body !== null && ({check})"))
            time.sleep(1.5)  # let the chart finish its transition
            text = page.eval("document.body ? document.body.innerText : ''") or ""
            png = page.call("Page.captureScreenshot", format="png")["data"]
        finally:
            page.close()
    out.write_bytes(base64.b64decode(png))
    return [r for r in runs if r not in text.split()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", help="tracking URI (default: sqlite:///<project>/mlflow/mlflow.db)")
    ap.add_argument("--experiment", default="icpo-repro", help="experiment name (default: icpo-repro)")
    ap.add_argument(
        "--demo", action="store_true", help="screenshot a throw-away store with runs grpo and icpo"
    )
    ap.add_argument("--view", choices=list(VIEWS), default="chart", help="page to open (default: chart)")
    ap.add_argument("--expect-runs", help="comma-separated run names the page must list (--demo: grpo,icpo)")
    ap.add_argument("--out", type=Path, default=Path("mlflow_runs.png"), help="PNG to write")
    ap.add_argument("--window-size", default="1600,1000", help="width,height in pixels")
    ap.add_argument("--page-timeout", type=float, default=90.0, help="seconds to wait for the runs / chart")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--server-timeout", type=float, default=120.0, help="seconds to wait for mlflow server")
    args = ap.parse_args(argv)

    if not Path(args.chromium).is_file():
        raise SystemExit(f"chromium not found at {args.chromium}; install it (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="mlflow-ui-") as tmp:
        tmp_dir = Path(tmp)
        if args.demo:
            uri = demo_store(tmp_dir, args.experiment)
        else:
            uri = args.store or f"sqlite:///{REPO / 'mlflow' / 'mlflow.db'}"
            if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
                raise SystemExit(f"no MLflow store at {uri}; run a training first, or pass --store / --demo")
        exp_id = experiment_id(uri, args.experiment)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_file = tmp_dir / "mlflow-server.log"
        server = start_server(uri, port, tmp_dir / "artifacts", log_file)
        try:
            wait_ready(base, server, args.server_timeout, log_file)
            url = f"{base}/#/experiments/{exp_id}{VIEWS[args.view]}"
            args.out.parent.mkdir(parents=True, exist_ok=True)
            expected = [r for r in (args.expect_runs or ("grpo,icpo" if args.demo else "")).split(",") if r]
            missing = capture(
                args.chromium,
                url,
                args.out.resolve(),
                args.window_size,
                expected,
                args.view in ("chart", "study"),
                args.page_timeout,
            )
        finally:
            stop(server)
    if missing:
        raise SystemExit(f"{url}: runs {missing} are not listed on the page (screenshot: {args.out})")
    print(f"{url} -> {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
