"""The tracking store: its URI, the experiment (created once, race-safe) and the one way to open a client."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

from icpo_core import paths
from icpo_core.config import Params

log = logging.getLogger(__name__)


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


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``, the one way the project opens a tracking store: short HTTP retries
    (:func:`_prepare_http_env`) and a new SQLite store created whole (:func:`create_sqlite_store`). MLflow's own
    log of a store write failure (a full disk: the driver's whole traceback) is silenced: every caller reports
    a store error in one line and goes on."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
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
