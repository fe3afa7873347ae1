"""A real ``mlflow server`` on localhost stopped in the middle of a training and started again: training goes on
at full speed, one warning, and every step reaches MLflow exactly once (buffered and replayed); a step log
replayed twice into a run adds nothing."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from icpo_core import steplog, tracking


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """``mlflow server`` on 127.0.0.1 in its own process group (stopped with the whole group)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        cmd += ["--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}"]
        cmd += ["--default-artifact-root", str(self.folder / "artifacts")]
        log = (self.folder / "server.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait(self, timeout_s: float = 180) -> None:
        t0 = time.monotonic()
        while not self.healthy():
            assert self.proc is not None and self.proc.poll() is None, (
                self.folder / "server.log"
            ).read_text()[-2000:]
            assert time.monotonic() - t0 < timeout_s, "mlflow server did not start"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.mark.slow
def test_server_outage_mid_run_loses_no_step(tmp_path, monkeypatch, caplog):
    from icpo_core import checkpoint_layout as layout
    from icpo_core.config import load_params
    from icpo_core.engines.local.tiny import make_tiny_project
    from icpo_core.engines.local.trainer import train_local

    server = _Server(tmp_path)
    server.start()
    try:
        server.wait()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        root = make_tiny_project(tmp_path / "proj", train={"steps": 6, "save_freq": 1})
        params = load_params(root / "params.yaml")
        steps_file = root / "metrics" / "steps_grpo.jsonl"
        back = threading.Event()

        def n_steps() -> int:
            return len(steplog.read_steps(steps_file))

        def outage() -> None:  # the server goes away after step 2 and is started again after step 3
            while n_steps() < 2:
                time.sleep(0.05)
            server.stop()
            while n_steps() < 3:
                time.sleep(0.05)
            server.start()
            server.wait()
            back.set()

        def reward(texts, golds):
            if n_steps() >= 5:  # a longer run: the server is back before the last steps
                back.wait(timeout=240)
            return [float(len(t) % 2 == 0) for t in texts]

        watcher = threading.Thread(target=outage, daemon=True)
        watcher.start()
        with caplog.at_level(logging.WARNING, logger="icpo_core.tracking"):
            summary = train_local(params, "grpo", root=root, reward_fn=reward, progress=False)
        watcher.join(timeout=240)
        assert back.is_set()
        assert summary["steps"] == 6
        rows = steplog.read_steps(steps_file)
        assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
        # steps 3 and 4 ran while the server was down: each stays far from a stalled client's minutes
        assert all(r["perf/step_time_s"] < 30 for r in rows if r["step"] in (3, 4))
        warnings = [
            r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("icpo_core")
        ]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "unreachable" in warnings[0].getMessage()

        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=server.uri)
        run_id = summary["mlflow_run_id"]
        history = client.get_metric_history(run_id, tracking.STEP_KEY)
        assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
        assert client.get_run(run_id).info.status == "FINISHED"
        assert layout.latest_step(root / "runs" / "grpo" / "checkpoints") == 6
    finally:
        server.stop()


def test_replay_sends_only_what_mlflow_misses(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = tracking.Tracker(uri, "exp-replay", root=tmp_path)
    assert t.start("r", tags={})
    rows = [
        {"step": s, tracking.STEP_KEY: 0.1 * s, "reward/on_policy": None, "x": float(s)}
        for s in (1, 2, 3, 4, 5)
    ]
    t.log_metrics(tracking.metric_rows(rows[:2]))
    assert t.replay(rows, through=4) == 2  # steps 3 and 4
    assert t.replay(rows) == 1  # step 5
    assert t.replay(rows) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for key in (tracking.STEP_KEY, "x"):
        assert [m.step for m in client.get_metric_history(t.run_id, key)] == [1, 2, 3, 4, 5]
    assert client.get_metric_history(t.run_id, "reward/on_policy") == []  # nulls are not metrics


def test_down_server_buffers_and_warns_once(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = tracking.Tracker(uri, "exp-buffer", root=tmp_path, retry_after_s=0.0)
    assert t.start("r", tags={})
    real = t._client

    class Refusing:  # the client of a server that refuses connections
        def __getattr__(self, name):
            def refuse(*a, **k):
                raise ConnectionRefusedError("connection refused")

            return refuse

    t._client = Refusing()
    with caplog.at_level(logging.WARNING, logger="icpo_core.tracking"):
        for s in (1, 2, 3):
            t.log_metrics([(s, {tracking.STEP_KEY: 1.0})])
    assert t.buffered_steps == [1, 2, 3]
    assert caplog.text.count("unreachable") == 1
    t._client = real
    t.log_metrics([(4, {tracking.STEP_KEY: 1.0})])
    assert t.buffered_steps == [] and not t.down
    assert [m.step for m in real.get_metric_history(t.run_id, tracking.STEP_KEY)] == [1, 2, 3, 4]
