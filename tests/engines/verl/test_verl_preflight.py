"""What launch() checks around verl: the plugin is registered, IEF prompts fit the rollout budget, and a run
that exits 0 without training is a failure."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from verl_fixtures import make_tokenizer, project_rows, write_demos

from icpo_core.config import parse_params
from icpo_core.engines.verl import job, preflight
from icpo_core.engines.verl.resume import check_or_record
from icpo_core.errors import UserError

ROOT = Path(__file__).resolve().parents[3]


def _params(**train):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"].update(train)
    return parse_params(raw)


@pytest.mark.slow
def test_plugin_check_passes_when_installed():
    preflight.check_plugin()  # a fresh interpreter: `import verl` registers icpo (the project is installed)


def test_missing_entry_point_is_refused_before_launch(monkeypatch):
    monkeypatch.setattr(preflight.metadata, "entry_points", lambda group: [])
    with pytest.raises(UserError, match=r"verl\.plugins.*pip install -e"):
        preflight.check_plugin()


def test_broken_plugin_is_refused(monkeypatch, tmp_path):
    """verl swallows the plugin's import error; the check runs the probe and names the failure."""
    fake_python = tmp_path / "python"
    fake_python.write_text(
        f'#!/bin/sh\nexec {sys.executable} -c \'print("{{\\"adv\\": false, \\"loss\\": false}}")\'\n'
    )
    fake_python.chmod(0o755)
    with pytest.raises(UserError, match="did not register"):
        preflight.check_plugin(python=str(fake_python))


def _project(root: Path, demo_words: int) -> None:
    (root / "data").mkdir(parents=True)
    project_rows(4).to_parquet(root / "data" / "train.parquet")
    write_demos(root / "data" / "demos.parquet")
    if demo_words:
        demos = pd.read_parquet(root / "data" / "demos.parquet")
        demos.loc[0, "solution"] = " ".join(["sol"] * demo_words) + " \\boxed{20}"
        demos.to_parquet(root / "data" / "demos.parquet")
    make_tokenizer().save_pretrained(root / "models" / "base")


def test_ief_prompts_longer_than_the_rollout_budget_are_refused(tmp_path):
    params = _params(max_prompt_length=24)
    algo = params.run_algorithm("icpo")
    _project(tmp_path / "ok", demo_words=0)
    longest, budget = preflight.longest_ief_prompt(params, "icpo", tmp_path / "ok")
    assert budget == preflight.ief_prompt_length(params, algo) == 24 * (1 + algo.k_demos)
    assert 24 < longest <= budget  # the demo-bearing prompt is longer than a plain one, and fits
    preflight.check_ief_prompt_budget(params, "icpo", tmp_path / "ok")

    _project(tmp_path / "long", demo_words=200)
    longest, _ = preflight.longest_ief_prompt(params, "icpo", tmp_path / "long")
    assert longest > budget + 150  # measured, not estimated: the 200-word demo is in it
    with pytest.raises(UserError, match=r"rollout\.prompt_length.*train\.max_prompt_length"):
        preflight.check_ief_prompt_budget(params, "icpo", tmp_path / "long")
    preflight.check_ief_prompt_budget(params, "grpo", tmp_path / "long")  # GRPO has no demos


def _fake_verl(monkeypatch, body: str) -> None:
    monkeypatch.setattr(
        job, "build_command", lambda p, run, root=".", env=None, instance=None: [sys.executable, "-c", body]
    )
    monkeypatch.setattr(job, "run_preflight", lambda *a: None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc123")  # no MLflow run opened here


def test_a_run_that_exits_zero_without_a_step_fails(tmp_path, monkeypatch, capfd):
    params = _params(steps=4)
    _fake_verl(monkeypatch, "print('resumed at an epoch boundary, nothing to do')")
    assert job.launch(params, "icpo", tmp_path) == 1
    assert "trained no step of runs.icpo" in capfd.readouterr().err

    write = "import json, os; open(os.environ['VERL_FILE_LOGGER_PATH'], 'w').write(json.dumps({'step': 1, 'data': {}}))"
    _fake_verl(monkeypatch, write)
    assert job.launch(params, "icpo", tmp_path) == 0


def test_a_finished_run_may_do_no_step(tmp_path, monkeypatch):
    params = _params(steps=4)
    ckpts = tmp_path / "runs" / "icpo" / "checkpoints"
    check_or_record(params, "icpo", ckpts)  # the fresh start's record
    actor = ckpts / "global_step_4" / "actor"
    actor.mkdir(parents=True)
    (actor / "extra_state_world_size_1_rank_0.pt").write_bytes(b"")
    _fake_verl(monkeypatch, "pass")
    assert job.launch(params, "icpo", tmp_path) == 0


def test_verl_pin_and_flash_attn_warning():
    from icpo_core.engines.verl import preflight

    preflight.check_verl_version()  # the installed verl is the pin
    with pytest.raises(UserError, match=r"verl==0\.9\.1.*found 0\.10\.0"):
        preflight.check_verl_version("0.10.0")
    assert "flash-attn is not installed" in preflight.attention_warning(on_cpu=False, flash_attn=False)
    assert preflight.attention_warning(on_cpu=False, flash_attn=True) is None
    assert preflight.attention_warning(on_cpu=True, flash_attn=False) is None
