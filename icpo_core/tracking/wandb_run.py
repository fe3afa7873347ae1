"""Weights & Biases beside MLflow (``tracking.loggers: [mlflow, wandb]``): the same metrics, params and tags.

- One wandb run per training run (instance ``<run>_s<seed>``) in project ``tracking.experiment``, grouped by
  study (``group`` = :func:`~icpo_core.tracking.study.study_id`) and typed by method (``job_type`` =
  ``icpo.method``); the MLflow tags as wandb tags ``<key>=<value>``, the MLflow params as the run's config.
- The run id is kept beside the checkpoints (``wandb_run.json``), so a resumed training continues its run.
- Files under ``runs/<instance>/wandb``. ``WANDB_MODE=offline`` (no network): the run folder is written there and
  ``wandb sync runs/<instance>/wandb/offline-run-*`` uploads it later.
- The local engine logs through :class:`WandbTracker` (the outage rules of :class:`.tracker.Tracker`: one warning,
  training goes on, nothing lost); verl logs through its own ``trainer.logger`` entry ``wandb``, configured by
  the environment of :func:`wandb_env` (verl's ``wandb.init`` takes no group, type or tags of its own).

wandb is imported inside the functions that talk to it: a run without it never loads it.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from icpo_core import paths
from icpo_core.io_utils import atomic_write_json

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run.json"  # beside the checkpoints (and MLflow's run-id file)
WANDB_SUBDIR = "wandb"  # wandb writes <runs/<instance>>/wandb/{run,offline-run}-<time>-<id>
_MAX_TAG = 64  # wandb's limit on one tag
# what :func:`wandb_env` sets, and WANDB_MODE (offline), which a multi-node verl run passes on to its Ray workers
# (never WANDB_API_KEY: the Ray env of a launch is part of its command line)
WANDB_ENV_KEYS = (
    "WANDB_RUN_GROUP",
    "WANDB_JOB_TYPE",
    "WANDB_TAGS",
    "WANDB_DIR",
    "WANDB_RUN_ID",
    "WANDB_RESUME",
    "WANDB_MODE",
)


def wandb_dir(instance: str, root: str | Path = ".") -> Path:
    """The folder wandb writes its run folders under (``runs/<instance>``; wandb adds ``wandb/``)."""
    return (Path(root) / paths.run_dir(instance)).resolve()


def wandb_tags(tags: Mapping[str, str]) -> list[str]:
    """MLflow tags as wandb tags ``key=value`` (wandb's tags are labels; MLflow's own ``mlflow.*`` left out)."""
    return [f"{k}={v}"[:_MAX_TAG] for k, v in sorted(tags.items()) if not k.startswith("mlflow.")]


def wandb_id_path(instance: str, root: str | Path = ".") -> Path:
    return Path(root) / paths.checkpoints_dir(instance) / WANDB_ID_FILE


def wandb_run_id(instance: str, root: str | Path = ".", fingerprint: str | None = None) -> str:
    """The wandb run id of a training run: the stored one (a resumed training continues its run), a new one
    when there is none or it belongs to other inputs (``fingerprint``, as MLflow's run-id file)."""
    path = wandb_id_path(instance, root)
    meta = _read_json(path)
    if meta.get("id") and (fingerprint is None or meta.get("fingerprint") == fingerprint):
        return str(meta["id"])
    run_id = secrets.token_hex(4)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"id": run_id, "fingerprint": fingerprint, "last_step": 0})
    return run_id


def wandb_config(
    params: Any,
    instance: str,
    tags: Mapping[str, str],
    root: str | Path = ".",
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """``wandb.init`` keywords of a training run (project, name, group, job type, tags, dir, id): the MLflow
    run's :func:`~icpo_core.tracking.runs.run_tags` give the study (group) and the method (job type)."""
    return {
        "project": params.tracking.experiment,
        "name": instance,
        "group": tags["icpo.study"],
        "job_type": tags["icpo.method"],
        "tags": wandb_tags(tags),
        "dir": str(wandb_dir(instance, root)),
        "id": wandb_run_id(instance, root, fingerprint),
    }


def wandb_env(params: Any, instance: str, tags: Mapping[str, str], root: str | Path = ".") -> dict[str, str]:
    """The environment verl's own wandb logger runs with: ``wandb.init`` reads group, job type, tags, folder
    and run id from it (verl passes only project, name and its own config). The MLflow run's params go in
    through :func:`open_wandb_run`, which the launch calls before verl starts."""
    cfg = wandb_config(params, instance, tags, root)
    Path(cfg["dir"]).mkdir(parents=True, exist_ok=True)
    return {
        "WANDB_RUN_GROUP": cfg["group"],
        "WANDB_JOB_TYPE": cfg["job_type"],
        "WANDB_TAGS": ",".join(t.replace(",", ";") for t in cfg["tags"]),
        "WANDB_DIR": cfg["dir"],
        "WANDB_RUN_ID": cfg["id"],
        "WANDB_RESUME": "allow",
    }


def open_wandb_run(
    params: Any,
    instance: str,
    tags: Mapping[str, str],
    run_params: Mapping[str, str],
    root: str | Path = ".",
) -> str | None:
    """Start the wandb run of a verl training from the launching process, with the MLflow run's params as its
    config and its group, type and tags, then close it here: verl's wandb logger continues the same run (the
    run id and ``WANDB_RESUME=allow`` of :func:`wandb_env`) and adds its own config and the metrics. Offline,
    that is a second run folder of the same id (``wandb sync`` both). Returns the run id, None when wandb
    cannot start (one warning)."""
    tracker = WandbTracker(wandb_id_path(instance, root))
    run_id = tracker.start(wandb_config(params, instance, tags, root), params=run_params)
    tracker.suspend()
    return run_id


def wandb_key_configured() -> bool:
    """A wandb API key is set (``WANDB_API_KEY``) or stored by ``wandb login`` (``~/.netrc``), without
    importing wandb."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    """One wandb run of a local training, with :class:`.tracker.Tracker`'s outage rules.

    - ``start`` fails online (no API key, no network): one warning, the run is written offline instead
      (``wandb sync`` uploads it later); fails offline too: one warning, a no-op.
    - A later call fails: one warning; the steps are kept and sent by a later call (tried at most once per
      ``retry_after_s``) or at ``finish``. wandb itself buffers and retries network trouble of a running run.
    - Steps go out with their training step as wandb's step (wandb's ``_step`` equals MLflow's step); the last
      one sent is kept in the run-id file, so a resumed training sends each step once.
    """

    def __init__(self, id_file: Path, *, retry_after_s: float = 10.0):
        self.id_file = Path(id_file)
        self.retry_after_s = retry_after_s
        self.run: Any = None
        self.run_id: str | None = None
        self.offline = False
        self._failed = False
        self._down = False
        self._last_try = 0.0
        self._buffer: list[tuple[int, dict[str, float]]] = []
        meta = _read_json(self.id_file)
        self.last_step = int(meta.get("last_step") or 0)

    @property
    def active(self) -> bool:
        return self.run is not None and not self._failed

    def start(self, init: Mapping[str, Any], *, params: Mapping[str, str] | None = None) -> str | None:
        """``wandb.init(**init)`` (resumed when the id exists), config ``params``; returns the run id or None."""
        try:
            import wandb
        except ImportError as e:
            return self._fail("start (wandb is not installed: pip install wandb)", e)
        kwargs = {**init, "config": dict(params or {}), "resume": "allow", "reinit": "create_new"}
        settings = wandb.Settings(silent=True, console="off", init_timeout=60)
        try:
            self.run = wandb.init(**kwargs, settings=settings)
        except Exception as e:
            if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
                return self._fail("start", e)
            log.warning(
                "wandb: cannot start an online run (%s: %s) -- writing it offline under %s/wandb; upload it "
                "later with `wandb sync <its offline-run-* folder>`",
                type(e).__name__,
                _first_line(e),
                init.get("dir"),
            )
            try:
                self.run = wandb.init(**kwargs, mode="offline", settings=settings)
            except Exception as e2:
                return self._fail("start (offline)", e2)
        self.run_id = self.run.id
        self.offline = bool(getattr(self.run.settings, "_offline", False))
        log.info(
            "wandb: run %s (%s) in %s", self.run_id, "offline" if self.offline else "online", self.run.dir
        )
        return self.run_id

    def _fail(self, what: str, err: BaseException) -> None:
        if not self._failed:
            log.warning(
                "wandb failed during %s: %s: %s -- training continues without wandb; MLflow and the step log "
                "on disk are complete",
                what,
                type(err).__name__,
                _first_line(err),
            )
        self._failed = True
        return None

    def _outage(self, what: str, err: BaseException) -> None:
        self._last_try = time.monotonic()
        if not self._down:
            self._down = True
            log.warning(
                "wandb failed during %s: %s: %s -- training continues; the steps are kept and sent again "
                "(every %.0f s and at the end)",
                what,
                type(err).__name__,
                _first_line(err),
                self.retry_after_s,
            )

    def _may_try(self) -> bool:
        return not self._down or time.monotonic() - self._last_try >= self.retry_after_s

    def log_metrics(self, rows: list[tuple[int, Mapping[str, float]]]) -> None:
        """Queue ``[(step, {name: value})]`` (finite numbers only, as MLflow) and send what is queued."""
        if not self.active:
            return
        for step, metrics in rows:
            items = {
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and v == v
            }
            # wandb's steps only grow: a step it already holds is not sent again (MLflow's replay rule)
            if items and int(step) >= self.last_step:
                self._buffer.append((int(step), items))
        self.flush()

    def flush(self) -> bool:
        """Send the queued steps, oldest first; True when nothing is left."""
        sent = 0
        while self._buffer and self.active and self._may_try():
            step, items = self._buffer[0]
            try:
                self.run.log(items, step=step)
            except Exception as e:
                self._outage("log", e)
                break
            self._down = False
            self._buffer.pop(0)
            self.last_step = max(self.last_step, step)
            sent += 1
        if sent:
            self._save_last_step()
        return not self._buffer

    def _save_last_step(self) -> None:
        meta = _read_json(self.id_file)
        if meta.get("id") == self.run_id:
            atomic_write_json(self.id_file, {**meta, "last_step": self.last_step})

    def replay(self, steps: list[Mapping[str, Any]], through: int | None = None) -> int:
        """Send the step-log rows wandb misses (after its last step, up to ``through``); returns how many."""
        if not self.active:
            return 0
        todo = [
            (int(r["step"]), {k: v for k, v in r.items() if k != "step"})
            for r in steps
            if int(r["step"]) > self.last_step and (through is None or int(r["step"]) <= through)
        ]
        self.log_metrics(todo)
        return len(todo)

    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None:
        """A summary dict: its scalars into the run's summary (``<file stem>/<key>``)."""
        if not self.active:
            return
        stem = Path(artifact_file).stem
        scalars = {
            f"{stem}/{k}": v for k, v in obj.items() if isinstance(v, str | int | float | bool) or v is None
        }
        try:
            self.run.summary.update(scalars)
        except Exception as e:
            self._outage("summary", e)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Files stay MLflow's (the step log and curves); wandb draws its own charts from the metrics."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.active:
            return
        try:
            self.run.tags = tuple(dict.fromkeys([*self.run.tags, *wandb_tags(tags)]))
        except Exception as e:
            self._outage("set_tags", e)

    def suspend(self) -> None:
        """The training stops before its end (``stop_after``): send what is queued and close the run locally; a
        resumed training continues it."""
        self._close(0)

    def finish(self, status: str = "FINISHED", *, sync_hint: str = "") -> None:
        self._close(0 if status == "FINISHED" else 1)

    def _close(self, exit_code: int) -> None:
        if not self.active:
            return
        self._last_try = 0.0  # one more try at the end, whatever the retry interval
        if not self.flush():
            steps = [s for s, _ in self._buffer]
            log.warning(
                "wandb still failing: %d steps (%s..%s) are only in MLflow and the step log on disk",
                len(steps),
                steps[0],
                steps[-1],
            )
        folder = getattr(self.run.settings, "sync_dir", None)
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as e:
            self._outage("finish", e)
        if self.offline and folder:
            log.info("wandb: offline run written to %s; upload it with `wandb sync %s`", folder, folder)
        self.run = None


class TrackerGroup:
    """The MLflow :class:`.tracker.Tracker` of a training plus the trackers beside it (wandb): every write goes
    to each, reads (``run_id``, ``active``, ``last_logged_step`` ...) come from MLflow's."""

    def __init__(self, mlflow: Any, others: list[Any]):
        self.mlflow = mlflow
        self.others = others

    def __getattr__(self, name: str) -> Any:
        return getattr(self.mlflow, name)

    @property
    def active(self) -> bool:
        return any(t.active for t in (self.mlflow, *self.others))

    def log_metrics(self, rows: list[tuple[int, Mapping[str, float]]]) -> None:
        for t in (self.mlflow, *self.others):
            t.log_metrics(rows)

    def replay(self, steps: list[Mapping[str, Any]], through: int | None = None) -> int:
        n = self.mlflow.replay(steps, through)
        for t in self.others:
            t.replay(steps, through)
        return n

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        for t in (self.mlflow, *self.others):
            t.log_dict(obj, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        for t in (self.mlflow, *self.others):
            t.log_artifact(path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for t in (self.mlflow, *self.others):
            t.set_tags(tags)

    def suspend(self) -> None:
        for t in (self.mlflow, *self.others):
            t.suspend()

    def finish(self, status: str = "FINISHED", *, sync_hint: str = "icpo sync-mlflow") -> None:
        for t in (self.mlflow, *self.others):
            t.finish(status, sync_hint=sync_hint)


def _read_json(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0][:300] if str(err) else ""
