"""A verl run's training params, recorded at its fresh start and checked before a resume launches verl.

verl's checkpoint manager writes only weights, optimizer, scheduler and RNG state, and ``trainer.resume_mode:
auto`` resumes from the newest ``global_step_N`` whatever params.yaml says now: an edited params.yaml would
silently train the remaining steps with other settings. So :func:`check_or_record` runs before the launch
(before Ray starts, in :func:`~.overrides.launch`): with no complete checkpoint yet it records
:func:`~icpo_core.engines.resume_params.training_params` and their hash in ``<checkpoints>/``:data:`PARAMS_FILE`
(atomically); with one, it compares them as the local engine compares its checkpoint's and refuses a change
naming each key (:func:`~icpo_core.engines.resume_params.check_resume`).

No verl / torch import here: the checkpoint folder is read with :mod:`icpo_core.checkpoint_layout`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icpo_core.checkpoint_layout import latest_step
from icpo_core.engines import resume_params
from icpo_core.errors import DataError
from icpo_core.io_utils import atomic_write_json

if TYPE_CHECKING:
    from icpo_core.config import Params


# Next to verl's global_step_N folders and latest_checkpointed_iteration.txt; verl's pruning removes old step
# folders only, and a fresh start (no complete step) rewrites it.
PARAMS_FILE = "icpo_training_params.json"


def read_record(ckpt_root: str | Path) -> dict[str, Any] | None:
    """The recorded ``{"params", "params_hash", ...}`` of ``ckpt_root`` (None when there is no record).

    A record that cannot be read as a JSON object is a :class:`DataError` naming it: resuming unchecked would
    hide exactly the edit the record is there to catch."""
    path = Path(ckpt_root) / PARAMS_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        state, why = None, f"{type(e).__name__}: {str(e)[:120]}"
    else:
        why = "not a JSON object"
    if not isinstance(state, dict):
        raise DataError(
            f"{path}: damaged record of the training params ({why}); delete {Path(ckpt_root)} to start over"
        )
    return state


def write_record(ckpt_root: str | Path, run: str, training: dict[str, Any]) -> Path:
    """Write ``training`` and its hash to ``<ckpt_root>/``:data:`PARAMS_FILE` atomically (a kill mid-write leaves
    the previous file or none, never half of one)."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    record = {
        "engine": "verl",
        "run": run,
        "params": training,
        "params_hash": resume_params.params_hash(training),
    }
    return atomic_write_json(root / PARAMS_FILE, record)


def check_or_record(params: Params, run: str, ckpt_root: str | Path) -> int | None:
    """Before a verl launch: refuse a resume whose training params changed, or record them for a fresh start.

    Returns the step verl will resume from (None: a fresh start, the params recorded). A checkpoint whose root
    holds no record of its params (a fresh start always writes one) is a :class:`DataError`: resuming unchecked
    would hide exactly the edit the record is there to catch."""
    root = Path(ckpt_root)
    training = resume_params.training_params(params, run, "verl")
    step = latest_step(root)
    if step is None:
        write_record(root, run, training)
        return None
    state = read_record(root)
    if state is None or not resume_params.check_resume(
        state, training, engine="verl", step=step, ckpt_root=str(root)
    ):
        raise DataError(
            f"{root}: the checkpoint at step {step} has no record of its training params ({PARAMS_FILE}, written "
            f"at the run's fresh start), so params.yaml cannot be checked against it; delete {root} to start over"
        )
    return step
