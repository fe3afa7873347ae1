"""MLflow conventions: one MLflow run per training run, the same tags everywhere, never a reason to stop.

- Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``params.tracking.tracking_uri``, else a local SQLite store
  ``sqlite:///<project>/mlflow/mlflow.db`` with artifacts under ``mlflow/artifacts`` (no server needed).
- Tags: ``icpo.run``, ``icpo.method``, ``icpo.variant``, ``icpo.engine``, ``icpo.profile``, ``icpo.dvc_stage``,
  ``git_commit``, plus every ``ICPO_TAG_<NAME>=value`` environment variable as tag ``<name>`` (lowercased);
  nested under ``ICPO_MLFLOW_PARENT_RUN_ID`` when that is set.
- Failures (server down, bad URI) warn once and turn the tracker into a no-op: the JSONL metrics on disk are the
  source of truth, so training never stops for MLflow.

Everything goes through ``MlflowClient`` with explicit run ids (no fluent global "active run"), so a stage can
hold a run open while other code logs elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
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
    """What identifies a study: the runs, seeds and every knob they train with (not tracking or report)."""
    cfg = {
        "profile": params.profile,
        "seeds": list(params.seeds),
        "study": params.study.model_dump(),
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
        _prepare_http_env(uri)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
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


def _prepare_http_env(uri: str) -> None:
    # MLflow retries refused connections with exponential backoff for minutes by default; keep the first
    # failure fast so an unreachable server costs seconds, not the run. Users can still override both.
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


class Tracker:
    """One MLflow run, created or re-attached; every call is a no-op after the first failure (warned once)."""

    def __init__(self, uri: str, experiment: str, *, root: str | Path = "."):
        self.uri = uri
        self.experiment = experiment
        self.root = Path(root)
        self.run_id: str | None = None
        self._client: Any = None
        self._failed = False

    @property
    def active(self) -> bool:
        return self.run_id is not None and not self._failed

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
            _prepare_http_env(self.uri)
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
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
        """Log ``[(step, {name: value})]`` in batches."""
        if not self.active or not rows:
            return
        try:
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [
                Metric(k, float(v), now, int(step))
                for step, metrics in rows
                for k, v in metrics.items()
                if isinstance(v, int | float) and v == v  # drop NaN (MLflow rejects it on some stores)
            ]
            for s in range(0, len(items), _MAX_METRICS_PER_BATCH):
                self._client.log_batch(self.run_id, metrics=items[s : s + _MAX_METRICS_PER_BATCH])
        except Exception as e:
            self._fail("log_metrics", e)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if not self.active:
            return
        try:
            self._client.log_dict(self.run_id, obj, artifact_file)
        except Exception as e:
            self._fail("log_dict", e)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        try:
            self._client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as e:
            self._fail("log_artifact", e)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.active:
            return
        try:
            for k, v in tags.items():
                self._client.set_tag(self.run_id, k, v)
        except Exception as e:
            self._fail("set_tags", e)

    def finish(self, status: str = "FINISHED") -> None:
        if not self.active:
            return
        try:
            self._client.set_terminated(self.run_id, status=status)
        except Exception as e:
            self._fail("finish", e)


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
        _prepare_http_env(uri)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
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
