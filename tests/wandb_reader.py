"""Read an offline wandb run folder back: the records of its ``run-<id>.wandb`` file (wandb's transaction log:
a ``:W&B`` header, then LevelDB-log blocks of 32 KiB whose records hold ``wandb_internal_pb2.Record`` messages).
wandb 0.31 ships no Python reader of its own (its core is a Go binary), so this is the format, read directly.
Also the wandb tests' shared autouse fixture :func:`fresh_wandb`."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest

_BLOCK = 32 * 1024
_HEADER = 7  # the file header (":W&B", magic, version) and each record header (crc32, length, type)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@pytest.fixture(autouse=True)
def fresh_wandb():
    """Each test starts and ends with no wandb run and no wandb service in this process: wandb's process-wide
    state (the current run, the service connection) would otherwise carry one test's run into the next. Autouse
    in every test module that imports it."""
    import wandb

    def reset() -> None:
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()

    reset()
    yield
    reset()


def records(path: Path) -> list[Any]:
    """The protobuf ``Record`` messages of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb transaction log"
    out, pos, pending = [], _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left - _HEADER
            continue
        chunk, pos = data[pos : pos + length], pos + length
        if kind in (_FULL, _LAST):
            rec = pb.Record()
            rec.ParseFromString(pending + chunk if kind == _LAST else chunk)
            out.append(rec)
            pending = b""
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
    return out


def offline_runs(folder: Path) -> list[Path]:
    """The offline run folders under ``folder`` (``<folder>/wandb/offline-run-*``), oldest first."""
    return sorted((Path(folder) / "wandb").glob("offline-run-*"))


def read_run(run_dir: Path, wait_s: float = 180.0) -> dict[str, Any]:
    """``{"run": Run record, "history": [{key: value, "_step": N}], "config": {key: value}, "kinds": record types
    in order}`` of one run folder. wandb's service process writes the log after ``run.finish()`` returns:
    read until its ``exit`` record is there (at most ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while True:
        got = _read_once(run_dir)
        if "exit" in got["kinds"] or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def _read_once(run_dir: Path) -> dict[str, Any]:
    (log_file,) = Path(run_dir).glob("run-*.wandb")
    run, history, config, kinds = None, [], {}, []
    for rec in records(log_file):
        kind = rec.WhichOneof("record_type")
        kinds.append(kind)
        if kind == "run":
            run = rec.run
            config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            history.append(row)
    return {"run": run, "history": history, "config": config, "kinds": kinds}


def config_values(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config as plain values (wandb stores some items as ``{"value": v, "desc": ...}``)."""
    return {
        k: v["value"] if isinstance(v, dict) and "value" in v and set(v) <= {"value", "desc"} else v
        for k, v in config.items()
    }


def metric_steps(history: list[dict[str, Any]]) -> dict[str, list[int]]:
    """metric name -> the steps it was logged at (wandb's own ``_step``; its ``_runtime`` etc. left out)."""
    out: dict[str, list[int]] = {}
    for row in history:
        for key in row:
            if not key.startswith("_"):
                out.setdefault(key, []).append(int(row["_step"]))
    return {k: sorted(v) for k, v in out.items()}
