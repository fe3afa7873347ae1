"""Paper profiles and the study DVC expands: which profile reproduces the paper, and whether the stages dvc.yaml
expands from params.yaml's top level are the active profile's study (DVC's templating cannot see a profile)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from icpo_core.config.params import Params
from icpo_core.config.study import PrimaryParams, StudyParams

PAPER_PROFILE_PREFIX = "paper_"
# The keys dvc.yaml expands its train@ / merge@ / bench@ stages from (`${study.runs}`, `${seeds}`, ...).
STUDY_MATRIX_KEYS = ("seeds", "study.runs", "study.ablations", "study.ablation_seeds")


def is_paper_profile(name: str) -> bool:
    """A profile that reproduces the paper's experiment (``paper_*``): a GPU study with the paper's arms."""
    return name.startswith(PAPER_PROFILE_PREFIX)


def _dotted(node: Any, key: str) -> Any:
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _matrix(values: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`STUDY_MATRIX_KEYS` of a params mapping (resolved, or params.yaml as DVC reads it: unset keys take
    the typed defaults)."""
    defaults = StudyParams().model_dump()
    out = {}
    for key in STUDY_MATRIX_KEYS:
        value = _dotted(values, key)
        if value is None:
            value = (
                Params.model_fields["seeds"].default
                if key == "seeds"
                else defaults[key.removeprefix("study.")]
            )
        out[key] = value
    return out


def _stages(m: Mapping[str, Any]) -> set[str]:
    """The train stages dvc.yaml expands from these values (merge@ / bench@ follow them)."""
    return {f"train@{r}-{s}" for r in m["study.runs"] for s in m["seeds"]} | {
        f"train_ablation@{r}-{s}" for r in m["study.ablations"] for s in m["study.ablation_seeds"]
    }


def _flag(value: Any) -> str:
    return "[" + ",".join(str(v) for v in value) + "]"


def study_command(params: Params, raw: Mapping[str, Any] | None = None) -> str:
    """The ``dvc exp run`` line that trains ``params``' study: its profile, and the top-level study keys DVC expands
    set to the profile's values (those that differ from ``raw``, params.yaml as it is; all of them without it),
    with ``study.primary=null`` when the top-level primary comparison would name runs outside them (the profile
    keeps its own)."""
    want = _matrix(params.model_dump())
    have = _matrix(raw) if raw is not None else {k: None for k in STUDY_MATRIX_KEYS}
    flags = [f"-S profile={params.profile}"]
    for key in STUDY_MATRIX_KEYS:
        if key == "study.ablation_seeds" and not want["study.ablations"]:
            continue  # no ablation stage either way
        if have[key] != want[key]:
            flags.append(f"-S '{key}={_flag(want[key])}'")
    top = (raw or {}).get("study") or {}
    primary = top.get("primary") if "primary" in top else PrimaryParams().model_dump()
    named = {r for pair in (primary or {}).get("comparisons") or [] for r in pair}
    if not named <= set(want["study.runs"]):
        flags.append("-S study.primary=null")
    return "dvc exp run " + " ".join(flags)


def dvc_study_problem(raw: dict[str, Any], params: Params) -> str | None:
    """Why DVC would expand other stages than the active profile's study, or None.

    DVC's templating reads ``${study.runs}`` and ``${seeds}`` from params.yaml's top level, before any stage runs;
    it cannot see a profile's deep merge. A profile that sets its own study (the paper profiles: their arms at one
    seed) therefore needs the same values at the top level, which ``dvc exp run -S`` writes (:func:`study_command`)."""
    want, have = _matrix(params.model_dump()), _matrix(raw)
    if _stages(want) == _stages(have):
        return None
    differ = [k for k in STUDY_MATRIX_KEYS if want[k] != have[k]]
    shown = ", ".join(f"{k} {want[k]} (dvc.yaml expands {have[k]})" for k in differ)
    return (
        f"profile {params.profile!r} trains {shown}: dvc.yaml expands its train@/merge@/bench@ stages from "
        "params.yaml's top-level keys, which a profile cannot reach. Run the profile's study with: "
        f"{study_command(params, raw)} (to change a value the profile sets, set profiles.{params.profile}.<key>)"
    )
