"""``dvc plots show`` draws every arm of the current study: the report writes one long-format file per measure
(rows ``{step, arm, value, min, max, n_seeds}``) for every run of ``study.runs`` + ``study.ablations``, and
dvc.yaml's ``plots:`` (no arm named there) read them with the template ``.dvc/plots/arms.json``, coloured by arm."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_study_report import run_report
from tests_report_helpers import REPO, make_params

from icpo_core.report.curves import ARMS_TEMPLATE, CURVES, arms_file, dvc_plots

PROCESS = ("reward/on_policy", "icpo/on_policy_groups_with_signal", "icpo/accept_rate", "actor/pg_clipfrac")
# params.yaml's example of the secondary arms
WEEKLY = ["grpo_compute_matched", "grpo_shuffled_reward", "luffy", "icpo_rs"]


def test_dvc_yaml_plots_are_the_generated_ones_and_name_no_arm():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert dvc["plots"] == dvc_plots()
    assert set(PROCESS) <= {key for key, _ in CURVES}
    text = yaml.safe_dump(dvc["plots"])
    params = make_params()
    # files per measure, not per arm
    assert not [r for r in params.runs if f"_{r}." in text or f"/{r}." in text]
    template = json.loads((REPO / ".dvc" / "plots" / f"{ARMS_TEMPLATE}.json").read_text())
    assert template["encoding"]["color"] == {"field": "arm", "type": "nominal", "title": "arm"}
    assert "<DVC_METRIC_DATA>" in json.dumps(template)


def _arms(params) -> dict[str, list[int]]:
    """arm -> its seeds, from params.yaml: the study's runs at ``seeds``, its ablations at ``ablation_seeds``."""
    return {
        **{r: list(params.seeds) for r in params.study.runs},
        **{r: list(params.study.ablation_seeds) for r in params.study.ablations},
    }


def _write_steps(root: Path, arms: dict[str, list[int]]) -> None:
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    for i, (arm, seeds) in enumerate(arms.items()):
        for seed in seeds:
            rows = [
                {"step": s, **{key: 0.1 * i + 0.01 * s + 0.001 * seed for key, _ in CURVES}}
                for s in (1, 2, 3)
            ]
            text = "".join(json.dumps(r) + "\n" for r in rows)
            (root / "metrics" / f"steps_{arm}_s{seed}.jsonl").write_text(text)


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = Path(sys.executable).with_name("dvc")
    return subprocess.run(
        [str(dvc), *args], cwd=root, capture_output=True, text=True, check=False, timeout=300
    )


@pytest.mark.parametrize("ablations", [None, WEEKLY], ids=["params.yaml", "with-ablations"])
def test_every_arm_of_the_study_is_written_and_rendered(tmp_path, monkeypatch, ablations):
    params = make_params() if ablations is None else make_params(study={"ablations": ablations})
    arms = _arms(params)
    assert set(arms) == {*params.study.runs, *params.study.ablations} and len(arms) >= 3
    _write_steps(tmp_path, arms)
    monkeypatch.chdir(tmp_path)
    assert run_report(params) == 0

    for key, _ in CURVES:
        rows = json.loads((tmp_path / "reports" / "plots" / arms_file(key)).read_text())
        assert {r["arm"] for r in rows} == set(arms), key
        for arm, seeds in arms.items():
            mine = [r for r in rows if r["arm"] == arm]
            assert [r["step"] for r in mine] == [1, 2, 3] and {r["n_seeds"] for r in mine} == {len(seeds)}
            assert all(r["min"] <= r["value"] <= r["max"] for r in mine)

    # a tiny generated DVC project: the repository's dvc.yaml, params.yaml and template, the report's files
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    if ablations is not None:
        raw["study"]["ablations"] = ablations
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    assert _dvc(tmp_path, "init", "--no-scm", "-q").returncode == 0
    (tmp_path / ".dvc" / "plots").mkdir(exist_ok=True)
    shutil.copy(REPO / ".dvc" / "plots" / f"{ARMS_TEMPLATE}.json", tmp_path / ".dvc" / "plots")
    shown = _dvc(tmp_path, "plots", "show", "--json")
    assert shown.returncode == 0, shown.stderr[-2000:]
    out = json.loads(shown.stdout)
    assert not out.get("errors"), out.get("errors")
    for plot in dvc_plots():
        (name,) = plot
        (rendered,) = out["data"][name]
        assert rendered["type"] == "vega"
        spec = rendered["content"]
        assert {v["arm"] for v in spec["data"]["values"]} == set(arms), name  # every arm drawn
        assert spec["encoding"]["color"]["field"] == "arm"
        assert spec["layer"][1]["encoding"]["y"]["field"] == "value"
