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

The package's API is this module (``from icpo_core import tracking``; ``tracking.<name>``); its parts:

- :mod:`.store`: the tracking URI, artifact location, experiment and client;
- :mod:`.tags`: string params (:func:`flatten`), the git commit, tags from the environment;
- :mod:`.study`: the study's id and parent run;
- :mod:`.runs`: a training run's tags, config and run-id file, :func:`open_training_run` (both engines),
  :func:`find_run`;
- :mod:`.tracker`: :class:`Tracker`, the outage-tolerant writer of one run, and MLflow's system metrics
  (``tracking.system_metrics``);
- :mod:`.wandb_run`: wandb beside MLflow (``tracking.loggers``): :class:`WandbTracker` for the local engine,
  :func:`wandb_env` for verl's own wandb logger;
- :mod:`.models`: the merged model as an MLflow logged model referencing its DVC path and md5.
"""

from icpo_core.tracking.models import (
    MERGED_MODEL_FILE,
    dvc_md5,
    merged_model_file,
    merged_model_id,
    register_merged_model,
)
from icpo_core.tracking.runs import (
    CONFIG_ARTIFACT,
    RUN_ID_FILE,
    find_run,
    open_training_run,
    read_run_id,
    read_run_meta,
    run_config,
    run_id_path,
    run_tags,
    write_run_id,
)
from icpo_core.tracking.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    artifact_location,
    create_sqlite_store,
    ensure_experiment,
    mlflow_client,
    tracking_uri,
)
from icpo_core.tracking.study import study_id, study_parent_run
from icpo_core.tracking.tags import PARENT_ENV, TAG_ENV_PREFIX, env_tags, flatten, git_commit
from icpo_core.tracking.tracker import (
    STEP_KEY,
    Tracker,
    metric_rows,
    start_system_metrics,
    stop_system_metrics,
    system_metrics,
)
from icpo_core.tracking.wandb_run import (
    WANDB_ENV_KEYS,
    WANDB_ID_FILE,
    TrackerGroup,
    WandbTracker,
    open_wandb_run,
    wandb_config,
    wandb_env,
    wandb_key_configured,
    wandb_tags,
)

__all__ = [
    "CONFIG_ARTIFACT",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "MERGED_MODEL_FILE",
    "PARENT_ENV",
    "RUN_ID_FILE",
    "STEP_KEY",
    "TAG_ENV_PREFIX",
    "Tracker",
    "TrackerGroup",
    "WANDB_ENV_KEYS",
    "WANDB_ID_FILE",
    "WandbTracker",
    "artifact_location",
    "create_sqlite_store",
    "dvc_md5",
    "ensure_experiment",
    "env_tags",
    "find_run",
    "flatten",
    "git_commit",
    "merged_model_file",
    "merged_model_id",
    "metric_rows",
    "mlflow_client",
    "open_training_run",
    "open_wandb_run",
    "read_run_id",
    "read_run_meta",
    "register_merged_model",
    "run_config",
    "run_id_path",
    "run_tags",
    "start_system_metrics",
    "stop_system_metrics",
    "study_id",
    "study_parent_run",
    "system_metrics",
    "tracking_uri",
    "wandb_config",
    "wandb_env",
    "wandb_key_configured",
    "wandb_tags",
    "write_run_id",
]
