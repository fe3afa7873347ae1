"""The merged model of a training run in MLflow, without a second copy of its weights.

``icpo merge`` writes ``runs/<instance>/merged`` (a DVC output); :func:`register_merged_model` then records it as
an MLflow 3 *external* logged model: its artifacts are only a reference, ``dvc_ref.json`` (the DVC path, its DVC
md5, the DVC stage and the files), and MLflow's stub ``MLmodel``. The model is the training run's output
(``source_run_id`` and the run's outputs), carries the run's tags, is registered in the model registry as a
version of ``<experiment>-<run>`` (source ``models:/<model id>``), and the training run gets the same reference as
``model/dvc_ref.json`` and the tag ``icpo.model_id``. ``runs/<instance>/merged_model.json`` keeps the model id for
the bench, which logs its metrics linked to the model (:func:`icpo_core.bench.mlflow_log.log_bench`).

The weights themselves: ``dvc pull runs/<instance>/merged`` (or ``dvc repro merge@<run>-<seed>``), checked
against the md5.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from icpo_core import paths
from icpo_core.config import Params
from icpo_core.io_utils import atomic_write_json
from icpo_core.tracking.runs import find_run, run_tags
from icpo_core.tracking.store import ensure_experiment, mlflow_client, tracking_uri

log = logging.getLogger(__name__)

MERGED_MODEL_FILE = "merged_model.json"  # runs/<instance>/merged_model.json: the logged model of merged/
REF_ARTIFACT = "dvc_ref.json"
MODEL_TYPE = "hf-merged"


def merged_model_file(instance: str) -> Path:
    return paths.run_dir(instance) / MERGED_MODEL_FILE


def dvc_md5(folder: str | Path) -> str:
    """The md5 DVC records for a folder (``<md5>.dir``, as in dvc.lock), computed by DVC's own code."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(Path(folder).resolve()), fs, "md5", dry_run=True)
    return str(obj.hash_info.value)


def dvc_reference(folder: str | Path, instance: str, root: str | Path = ".") -> dict[str, Any]:
    """What the logged model holds instead of the weights: where DVC keeps them and their md5."""
    folder = Path(root) / folder
    files = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file())
    run, _, seed = instance.rpartition("_s")
    stage = f"merge@{run}-{seed}" if run and seed.isdigit() else f"merge@{instance}"
    return {
        "path": paths.merged_dir(instance).as_posix(),
        "md5": dvc_md5(folder),
        "dvc_stage": stage,
        "files": files,
        "bytes": sum((folder / f).stat().st_size for f in files),
        "fetch": f"dvc pull {paths.merged_dir(instance).as_posix()}  (or: dvc repro {stage})",
    }


def registered_model_name(params: Params, run: str) -> str:
    return f"{params.tracking.experiment}-{run}"


def register_merged_model(
    params: Params, run: str, instance: str | None = None, *, step: int | None = None, root: str | Path = "."
) -> str | None:
    """Record ``runs/<instance>/merged`` as an external MLflow logged model of the instance's training run
    (module doc); writes ``runs/<instance>/merged_model.json`` and returns the model id (None: MLflow failed,
    one warning; the merge itself stands)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models.utils import get_external_mlflow_model_spec
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_IS_EXTERNAL

    name = instance or run
    root = Path(root)
    (root / merged_model_file(name)).unlink(missing_ok=True)  # a model id of an older merge is never reused
    ref = dvc_reference(paths.merged_dir(name), name, root)
    uri = tracking_uri(params, root)
    try:
        client = mlflow_client(uri)
        exp_id = ensure_experiment(client, params.tracking.experiment, uri, root)
        run_id = find_run(params, name, root)
        tags = run_tags(params, run, root=root, instance=instance)
        tags = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
        tags.update(
            {
                MLFLOW_MODEL_IS_EXTERNAL: "true",
                "icpo.dvc_stage": ref["dvc_stage"],
                "icpo.dvc_path": ref["path"],
                "icpo.dvc_md5": ref["md5"],
            }
        )
        model = client.create_logged_model(
            exp_id,
            name=name,
            source_run_id=run_id,
            tags=tags,
            params={"path": ref["path"], "md5": ref["md5"], "step": str(step), "bytes": str(ref["bytes"])},
            model_type=MODEL_TYPE,
        )
        with tempfile.TemporaryDirectory() as tmp:
            get_external_mlflow_model_spec(model).save(str(Path(tmp) / "MLmodel"))
            (Path(tmp) / REF_ARTIFACT).write_text(json.dumps(ref, indent=2) + "\n")
            client.log_model_artifacts(model.model_id, tmp)
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        if run_id:
            client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step or 0)])
            client.log_dict(run_id, {**ref, "model_id": model.model_id}, f"model/{REF_ARTIFACT}")
            client.set_tag(run_id, "icpo.model_id", model.model_id)
        version = _register(client, registered_model_name(params, run), model.model_id, run_id, ref)
        info = {
            "model_id": model.model_id,
            "run_id": run_id,
            "tracking_uri": uri,
            "registered_model": registered_model_name(params, run),
            "version": version,
            **ref,
        }
        atomic_write_json(root / merged_model_file(name), info)
        log.info(
            "MLflow: merged model of %s is logged model %s (%s, md5 %s)",
            name,
            model.model_id,
            ref["path"],
            ref["md5"],
        )
        return model.model_id
    except Exception as e:
        log.warning(
            "MLflow: the merged model of %s is not recorded: %s: %s", name, type(e).__name__, str(e)[:300]
        )
        return None


def _register(client: Any, name: str, model_id: str, run_id: str | None, ref: dict[str, Any]) -> str | None:
    """A version of registered model ``name`` for the logged model (the registry's view of the arm's seeds)."""
    try:
        try:
            client.get_registered_model(name)
        except Exception:
            try:
                client.create_registered_model(name)
            except Exception:  # another merge created it meanwhile
                client.get_registered_model(name)
        mv = client.create_model_version(
            name,
            source=f"models:/{model_id}",
            run_id=run_id,
            model_id=model_id,
            tags={"icpo.dvc_path": ref["path"], "icpo.dvc_md5": ref["md5"]},
        )
        return str(mv.version)
    except Exception as e:
        log.info("MLflow: merged model %s not registered as %r: %s", model_id, name, str(e)[:300])
        return None


def merged_model_id(params: Params, instance: str, root: str | Path = ".") -> str | None:
    """The logged model of ``runs/<instance>/merged`` recorded by ``icpo merge`` in this tracking store."""
    try:
        info = json.loads((Path(root) / merged_model_file(instance)).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("tracking_uri") != tracking_uri(params, root):
        return None
    return info.get("model_id")
