"""The outage-tolerant writer of one MLflow run (:class:`Tracker`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from icpo_core.tracking.store import ensure_experiment, mlflow_client

log = logging.getLogger(__name__)

_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


def metric_rows(steps: list[Mapping[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """Step-log rows (``{"step": N, name: value | None}``) -> ``[(N, {name: value})]`` for :meth:`Tracker.log_metrics`."""
    return [(int(r["step"]), {k: v for k, v in r.items() if k != "step"}) for r in steps]


# every step of both engines logs it (a step's metrics go in one batch): the last step MLflow holds
STEP_KEY = "perf/step_time_s"


class Tracker:
    """One MLflow run, created or re-attached; training never stops or waits long for MLflow.

    - ``start`` fails (server down, bad URI): one warning, the tracker is a no-op for the run.
    - A later call fails (an outage mid-run): one warning; metrics are kept in memory (whole steps, with their
      original timestamps, so a batch that did reach the server is not stored twice) and replayed by the next
      ``log_metrics`` or ``finish`` once the server answers; while it is down a call is tried at most once per
      ``retry_after_s``, each bounded by MLflow's HTTP timeout / retries (set short by :func:`.store.mlflow_client`).
    - What is still missing at the end is in the step log on disk: ``icpo sync-mlflow`` replays it
      (:meth:`replay`), as does a resumed training.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        *,
        root: str | Path = ".",
        retry_after_s: float = 10.0,
        system_metrics: bool = False,
    ):
        self.uri = uri
        self.system_metrics = system_metrics  # MLflow's system/... metrics while the run is open here
        self._monitor: Any = None
        self.experiment = experiment
        self.root = Path(root)
        self.retry_after_s = retry_after_s
        self.run_id: str | None = None
        self._client: Any = None
        self._failed = False  # start failed: no run for this training
        self._down_since: float | None = None  # monotonic time of the first failure of this outage
        self._last_try = 0.0
        self._buffer: list[list[Any]] = []  # unsent metrics, one list per step, in step order
        self.outages = 0

    @property
    def active(self) -> bool:
        return self.run_id is not None and not self._failed

    @property
    def down(self) -> bool:
        return self._down_since is not None

    @property
    def buffered_steps(self) -> list[int]:
        return [int(ms[0].step) for ms in self._buffer if ms]

    def _fail(self, what: str, err: BaseException) -> None:
        if not self._failed:
            log.warning(
                "MLflow (%s) failed during %s: %s: %s -- training continues without MLflow; the metrics "
                "JSONL on disk is complete",
                self.uri,
                what,
                type(err).__name__,
                str(err).splitlines()[0][:300] if str(err) else "",
            )
        self._failed = True

    def _outage(self, what: str, err: BaseException) -> None:
        import time

        self._last_try = time.monotonic()
        if self._down_since is None:
            self._down_since = self._last_try
            self.outages += 1
            log.warning(
                "MLflow (%s) unreachable during %s: %s: %s -- training continues; metrics are buffered and "
                "replayed when it is back (retried every %.0f s; the step log on disk is complete)",
                self.uri,
                what,
                type(err).__name__,
                str(err).splitlines()[0][:300] if str(err) else "",
                self.retry_after_s,
            )

    def _back(self) -> None:
        if self._down_since is not None:
            import time

            log.info(
                "MLflow (%s) is back after %.0f s; replaying %d buffered steps",
                self.uri,
                time.monotonic() - self._down_since,
                len(self._buffer),
            )
        self._down_since = None

    def _may_try(self) -> bool:
        import time

        return self._down_since is None or time.monotonic() - self._last_try >= self.retry_after_s

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
        """One client call with the outage rules; True when it went through."""
        if not self.active or not self._may_try():
            return False
        try:
            fn(*args, **kwargs)
        except Exception as e:
            self._outage(what, e)
            return False
        self._back()
        return True

    def _experiment_id(self) -> str:
        return ensure_experiment(self._client, self.experiment, self.uri, self.root)

    def start(
        self,
        run_name: str,
        *,
        tags: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        resume_run_id: str | None = None,
    ) -> str | None:
        """Re-attach to ``resume_run_id`` if it still exists, else create a run; returns its id (None if down)."""
        try:
            from mlflow.entities import Param

            self._client = mlflow_client(self.uri)
            exp_id = self._experiment_id()
            if resume_run_id:
                try:
                    old = self._client.get_run(resume_run_id)
                    if old.info.lifecycle_stage == "active" and old.info.experiment_id == exp_id:
                        self.run_id = resume_run_id
                        self._client.update_run(self.run_id, status="RUNNING")
                        log.info("MLflow: resuming run %s", self.run_id)
                        self._start_monitor(resume=True)
                        return self.run_id
                except Exception as e:  # deleted or from another store: start a new one
                    log.info("MLflow: run %s cannot be resumed (%s); starting a new run", resume_run_id, e)
            run = self._client.create_run(exp_id, run_name=run_name, tags=dict(tags))
            self.run_id = run.info.run_id
            items = [Param(k, v[:6000]) for k, v in (params or {}).items()]
            for s in range(0, len(items), _MAX_PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, params=items[s : s + _MAX_PARAMS_PER_BATCH])
            log.info("MLflow: run %s in experiment %r at %s", self.run_id, self.experiment, self.uri)
            self._start_monitor(resume=False)
            return self.run_id
        except Exception as e:
            self._fail("start", e)
            return None

    def log_metrics(self, rows: list[tuple[int, Mapping[str, float]]]) -> None:
        """Log ``[(step, {name: value})]``: buffered, then sent in batches of whole steps (a step is never split)."""
        if not self.active:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for step, metrics in rows:
            items = [
                Metric(k, float(v), now, int(step))
                for k, v in metrics.items()
                if isinstance(v, int | float)
                and v == v  # drop NaN / null (MLflow rejects NaN on some stores)
            ]
            if items:
                self._buffer.append(items)
        self.flush()

    def flush(self) -> bool:
        """Send the buffered steps (oldest first); True when nothing is left."""
        while self._buffer and self.active and self._may_try():
            batch: list[Any] = []
            n = 0
            while n < len(self._buffer) and (
                not batch or len(batch) + len(self._buffer[n]) <= _MAX_METRICS_PER_BATCH
            ):
                batch.extend(self._buffer[n])
                n += 1
            if not self._call("log_metrics", self._client.log_batch, self.run_id, metrics=batch):
                return False
            del self._buffer[:n]
        return not self._buffer

    def last_logged_step(self, key: str = STEP_KEY) -> int | None:
        """The highest step MLflow holds for ``key`` (0: none), or None when it cannot be asked."""
        if not self.active:
            return None
        try:
            history = self._client.get_metric_history(self.run_id, key)
        except Exception as e:
            self._outage("get_metric_history", e)
            return None
        return max((int(m.step) for m in history), default=0)

    def replay(self, steps: list[Mapping[str, Any]], through: int | None = None) -> int:
        """Log the step-log rows MLflow misses (steps after its last logged one, up to ``through``); returns
        how many steps were queued (sent unless MLflow went down again). A step it holds is never sent again."""
        last = self.last_logged_step()
        if last is None:
            return 0
        todo = [r for r in steps if int(r["step"]) > last and (through is None or int(r["step"]) <= through)]
        self.log_metrics(metric_rows(todo))
        return len(todo)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if self.active:
            self._call("log_dict", self._client.log_dict, self.run_id, obj, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._call("log_artifact", self._client.log_artifact, self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.active:
            return
        for k, v in tags.items():
            if not self._call("set_tags", self._client.set_tag, self.run_id, k, v):
                return

    def _start_monitor(self, resume: bool) -> None:
        if self.system_metrics and self.run_id:
            self._monitor = start_system_metrics(self.run_id, self.uri, resume=resume)

    def _stop_monitor(self) -> None:
        stop_system_metrics(self._monitor)
        self._monitor = None

    def suspend(self) -> None:
        """The training stops before its end (``stop_after``): send what is buffered; the run stays open."""
        self._stop_monitor()
        if self.active:
            self._last_try = 0.0
            self.flush()

    def finish(self, status: str = "FINISHED", *, sync_hint: str = "icpo sync-mlflow") -> None:
        self._stop_monitor()
        if not self.active:
            return
        self._last_try = 0.0  # one more try at the end, whatever the retry interval
        if not self.flush():
            log.warning(
                "MLflow (%s) still unreachable: %d steps (%s..%s) are only in the step log on disk; run `%s` "
                "when the server is back",
                self.uri,
                len(self._buffer),
                self.buffered_steps[0],
                self.buffered_steps[-1],
                sync_hint,
            )
            return
        self._call("finish", self._client.set_terminated, self.run_id, status=status)


def start_system_metrics(run_id: str, uri: str, *, resume: bool = False) -> Any:
    """MLflow's system metrics monitor (``system/...``: CPU, memory, disk, network, GPU every 10 s; needs psutil)
    on run ``run_id``, started; ``resume``: continue the steps of the run's earlier ones. None when it cannot
    start (one warning: never a reason to stop)."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception as e:
        log.warning("MLflow system metrics not logged: %s: %s", type(e).__name__, str(e)[:300])
        return None


def stop_system_metrics(monitor: Any) -> None:
    if monitor is None:
        return
    try:
        monitor.finish()
    except Exception as e:
        log.info("MLflow system metrics: stopping the monitor failed: %s", e)


@contextlib.contextmanager
def system_metrics(enabled: bool, run_id: str | None, uri: str) -> Iterator[Any]:
    """MLflow's system metrics on ``run_id`` for the duration of the block when ``enabled`` (a bench run)."""
    monitor = start_system_metrics(run_id, uri, resume=True) if enabled and run_id else None
    try:
        yield monitor
    finally:
        stop_system_metrics(monitor)
