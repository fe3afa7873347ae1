"""The local engine honours algorithm.think_format in its training grader and train.deterministic around the
training, as the verl engine does (tests/engines/verl/test_verl_reward.py, test_verl_overrides.py)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from icpo_core.config import deep_merge, parse_params
from icpo_core.engines.local.trainer import LocalTrainer
from icpo_core.grading import Grader

ROOT = Path(__file__).resolve().parents[3]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def _trainer(run: str, **sections) -> LocalTrainer:
    return LocalTrainer(parse_params(deep_merge(RAW, sections)), run, root=ROOT, progress=False)


def test_the_training_grader_applies_the_runs_think_format():
    responses = [
        "<think>2+2</think> \\boxed{4}",
        "no think block \\boxed{4}",
        "<think>\\boxed{4}</think> \\boxed{5}",
    ]
    grader = Grader(workers=1, timeout_s=5.0)  # every answer here is decided without a worker
    try:
        luffy = _trainer(
            "luffy", runs={"luffy": {"think_format": "luffy"}}
        )  # no model loaded: only the grader
        luffy._grader = grader
        assert luffy._rewards(responses, ["4"] * 3) == [1.0, 0.0, 0.0]
        plain = _trainer("luffy")
        plain._grader = grader
        assert plain._rewards(responses, ["4"] * 3) == [1.0, 1.0, 0.0]
    finally:
        grader.close()


def test_deterministic_training_runs_under_torchs_deterministic_kernels(monkeypatch):
    seen: list[bool] = []
    before = torch.are_deterministic_algorithms_enabled()
    for flag in (True, False):
        trainer = _trainer("grpo", train={"deterministic": flag})
        monkeypatch.setattr(
            trainer,
            "_train",
            lambda stop_after: seen.append(torch.are_deterministic_algorithms_enabled()) or {},
        )
        assert trainer.train() == {}
        assert torch.are_deterministic_algorithms_enabled() is before  # restored after the run
    assert seen == [True, before]
