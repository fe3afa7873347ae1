"""MLflow conventions: one MLflow run per training run, the same tags everywhere, never a reason to stop.

- Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``params.tracking.tracking_uri``, else a local SQLite store
  ``sqlite:///<project>/mlflow/mlflow.db`` with artifacts under ``mlflow/artifacts`` (no server needed).
- Tags: ``icpo.run``, ``icpo.method``, ``icpo.variant``, ``icpo.engine``, ``icpo.profile``, ``icpo.dvc_stage``,
  ``git_commit``, plus every ``ICPO_TAG_<NAME>=value`` environment variable as tag ``<name>`` (lowercased);
  nested under ``ICPO_MLFLOW_PARENT_RUN_ID`` when that is set.
- Failures never stop training: a server that cannot be reached at the start warns once and the tracker is a
  no-op; an outage mid-run warns once, metrics are buffered and replayed when it is back (:class:`Tracker`).
  The step log on disk is the source of truth: ``icpo sync-mlflow`` replays what MLflow still misses.

Everything goes through ``MlflowClient`` with explicit run ids (no fluent global "active run"), so a stage can
hold a run open while other code logs elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from icpo_core import paths
from icpo_core.config import Params
from icpo_core.io_utils import atomic_write_json

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run.json"  # stored next to the checkpoints, so a resumed training reuses its run
PARENT_ENV = "ICPO_MLFLOW_PARENT_RUN_ID"
TAG_ENV_PREFIX = "ICPO_TAG_"
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


def tracking_uri(params: Params, root: str | Path = ".") -> str:
    """The tracking URI by precedence: env, params, local SQLite under ``<root>/mlflow``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if params.tracking.tracking_uri:
        return params.tracking.tracking_uri
    db = (Path(root) / paths.MLFLOW_DIR / "mlflow.db").resolve()
    return f"sqlite:///{db}"


def artifact_location(uri: str, root: str | Path = ".") -> str | None:
    """Artifacts of the default SQLite store go to ``mlflow/artifacts`` (never a cwd-relative ./mlruns)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    if not uri.startswith(("http://", "https://", "databricks")):
        return (Path(root) / paths.MLFLOW_DIR / "artifacts").resolve().as_uri()
    return None  # a server decides


# MLflow 3 opens an experiment without this tag in its GenAI view (traces); "custom_model_development" is the
# value its UI writes for "Machine learning" experiments, which open on the runs table and its metric charts.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(client: Any, name: str, uri: str, root: str | Path = ".") -> str:
    """The id of experiment ``name``, created (with an explicit artifact location) if missing; race-safe.

    The experiment is marked as a model-training one (``mlflow.experimentKind``) on creation, and an existing
    experiment without a kind gets the tag too; a kind someone chose in the UI is kept."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=artifact_location(uri, root),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except Exception:
            # Another process created it between the two calls.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
        try:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except Exception as e:  # only how the UI opens it; never a reason to stop (e.g. a read-only server)
            log.info("MLflow: cannot tag experiment %r as a training experiment: %s", name, e)
    return exp.experiment_id


def flatten(obj: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}`` with string values (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name, sep))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return out


def git_commit(root: str | Path = ".") -> str:
    """HEAD of the project checkout (``-dirty`` when tracked files changed), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{head}-dirty" if dirty else head
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def env_tags() -> dict[str, str]:
    """``ICPO_TAG_<NAME>=value`` environment variables as ``{<name lowercased>: value}``."""
    return {
        k.removeprefix(TAG_ENV_PREFIX).lower(): v
        for k, v in os.environ.items()
        if k.startswith(TAG_ENV_PREFIX) and len(k) > len(TAG_ENV_PREFIX)
    }


def study_id(params: Params) -> str:
    """What identifies a study: the runs, seeds and every knob they train with (not tracking, report or the
    preregistered primary comparison)."""
    cfg = {
        "profile": params.profile,
        "seeds": list(params.seeds),
        "study": params.study.model_dump(exclude={"primary"}),
        "runs": params.runs,
        "model": params.model.model_dump(),
        "data": params.data.model_dump(),
        "algorithm": params.algorithm.model_dump(),
        "train": params.train.model_dump(),
        "bench": params.bench.model_dump(),
    }
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def study_parent_run(params: Params, root: str | Path = ".") -> str | None:
    """The MLflow parent run of this study (found by tag ``icpo.study``, else created), so MLflow's runs view
    groups the run x seed children under one row per study. ``ICPO_MLFLOW_PARENT_RUN_ID`` (set by the Prefect
    flows) takes precedence. None when MLflow is unreachable (training never waits for it)."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    uri = tracking_uri(params, root)
    sid = study_id(params)
    try:
        from mlflow.entities import Param

        client = mlflow_client(uri)
        exp_id = ensure_experiment(client, params.tracking.experiment, uri, root)
        found = client.search_runs(
            [exp_id],
            filter_string=f"tags.`icpo.study` = '{sid}' and tags.`icpo.kind` = 'study'",
            max_results=1,
        )
        if found:
            return found[0].info.run_id
        runs = ", ".join(params.study.runs)
        tags = {
            "icpo.kind": "study",
            "icpo.study": sid,
            "icpo.profile": params.profile,
            "mlflow.note.content": f"Study {sid}: {runs} x seeds {list(params.seeds)}; ablations "
            f"{params.study.ablations or 'none'} x seeds {list(params.study.ablation_seeds)}.",
            "git_commit": git_commit(root),
        }
        run = client.create_run(exp_id, run_name=f"study-{params.profile}-{sid}", tags=tags)
        study = flatten({"seeds": list(params.seeds), "study": params.study.model_dump()})
        client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in study.items()])
        client.set_terminated(run.info.run_id)
        return run.info.run_id
    except Exception as e:
        log.warning("MLflow (%s): no study parent run (%s: %s)", uri, type(e).__name__, str(e)[:200])
        return None


def run_tags(
    params: Params,
    run: str,
    *,
    stage: str | None = None,
    root: str | Path = ".",
    instance: str | None = None,
) -> dict[str, str]:
    """The tags of a training run's MLflow run; ``instance`` (``<run>_s<seed>``) marks one seed of the study
    and nests the run under the study's parent run."""
    algo = params.run_algorithm(run)
    name = instance or run
    tags = {
        "icpo.run": run,
        "icpo.instance": name,
        "icpo.seed": str(params.seed),
        "icpo.study": study_id(params),
        "icpo.method": algo.method,
        "icpo.variant": run,
        "icpo.engine": params.train.engine,
        "icpo.profile": params.profile,
        "icpo.dvc_stage": stage or (f"train@{run}-{params.seed}" if instance else f"train@{run}"),
        "git_commit": git_commit(root),
    }
    tags.update(env_tags())
    parent = os.environ.get(PARENT_ENV) or (study_parent_run(params, root) if instance else None)
    if parent:
        tags["mlflow.parentRunId"] = parent
    return tags


def run_config(params: Params, run: str) -> dict[str, Any]:
    """The resolved config of one training run (what its MLflow params and config artifact hold)."""
    return {
        "run": run,
        "profile": params.profile,
        "seed": params.seed,
        "model": params.model.model_dump(),
        "data": params.data.model_dump(),
        "algorithm": params.run_algorithm(run).model_dump(),
        "train": params.train.model_dump(),
    }


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``, the one way the project opens a tracking store: short HTTP retries
    (:func:`_prepare_http_env`) and a new SQLite store created whole (:func:`create_sqlite_store`)."""
    _prepare_http_env(uri)
    create_sqlite_store(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def create_sqlite_store(uri: str) -> None:
    """Create a missing SQLite store atomically. MLflow builds one by running its schema migrations in the file
    itself (about 20 s on 2 cores); a process killed meanwhile leaves a file MLflow can never open again
    ("table secrets already exists"), which `scripts/kill_check.py` hit. So the store is migrated in a temporary
    file beside it and hard-linked into place when complete; ``os.link`` refuses if another process got there
    first, whose store is complete too. A leftover temporary file of a killed process is never used."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name per call: MLflow caches a SQLite store per URI, and a cached one would not be built again
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        MlflowClient(tracking_uri=f"sqlite:///{tmp}")  # runs the migrations
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _prepare_http_env(uri: str) -> None:
    # MLflow retries refused connections with exponential backoff for minutes by default; keep each call short
    # so an unreachable server costs seconds per step, not the run. Users can still override all three.
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


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
      ``retry_after_s``, each bounded by MLflow's HTTP timeout / retries (set short by :func:`_prepare_http_env`).
    - What is still missing at the end is in the step log on disk: ``icpo sync-mlflow`` replays it
      (:meth:`replay`), as does a resumed training.
    """

    def __init__(self, uri: str, experiment: str, *, root: str | Path = ".", retry_after_s: float = 10.0):
        self.uri = uri
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
                        return self.run_id
                except Exception as e:  # deleted or from another store: start a new one
                    log.info("MLflow: run %s cannot be resumed (%s); starting a new run", resume_run_id, e)
            run = self._client.create_run(exp_id, run_name=run_name, tags=dict(tags))
            self.run_id = run.info.run_id
            items = [Param(k, v[:6000]) for k, v in (params or {}).items()]
            for s in range(0, len(items), _MAX_PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, params=items[s : s + _MAX_PARAMS_PER_BATCH])
            log.info("MLflow: run %s in experiment %r at %s", self.run_id, self.experiment, self.uri)
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

    def finish(self, status: str = "FINISHED", *, sync_hint: str = "icpo sync-mlflow") -> None:
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


def run_id_path(run: str) -> Path:
    return paths.checkpoints_dir(run) / RUN_ID_FILE


def read_run_id(path: str | Path, uri: str) -> str | None:
    """The stored MLflow run id of a training run, if it was made against the same tracking URI."""
    data = read_run_meta(path)
    return data.get("run_id") if data.get("tracking_uri") == uri else None


def read_run_meta(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_run_id(path: str | Path, run_id: str, uri: str, **extra: Any) -> None:
    """Store the MLflow run id of a training run (``extra``: e.g. the config fingerprint it belongs to)."""
    atomic_write_json(path, {"run_id": run_id, "tracking_uri": uri, **extra})


def find_run(params: Params, run: str, root: str | Path = ".") -> str | None:
    """The MLflow run id of training run (instance) ``run`` (the one its checkpoints recorded, else the newest
    tagged ``icpo.instance=<run>`` of this profile), or None when there is none or the store is unreachable."""
    uri = tracking_uri(params, root)
    stored = read_run_id(Path(root) / run_id_path(run), uri)
    try:
        client = mlflow_client(uri)
        if stored:
            try:
                if client.get_run(stored).info.lifecycle_stage == "active":
                    return stored
            except Exception:
                pass
        exp = client.get_experiment_by_name(params.tracking.experiment)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`icpo.instance` = '{run}' and tags.`icpo.profile` = '{params.profile}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None
    except Exception as e:
        log.warning("MLflow (%s) unreachable while looking up run %r: %s", uri, run, e)
        return None
