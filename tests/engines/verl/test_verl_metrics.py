"""verl's per-launch step logs -> metrics/steps_<run>.jsonl (contract names; a resumed launch wins)."""

from __future__ import annotations

import json

from icpo_core.engines.verl.metrics import export_steps, metrics_dir


def _write(path, steps):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": s, "data": d}) + "\n" for s, d in steps))


def test_export_merges_launches_and_renames(tmp_path):
    assert export_steps("icpo", tmp_path) is None  # nothing logged yet
    d = tmp_path / metrics_dir("icpo")
    _write(
        d / "20261122-040000.jsonl",
        [(1, {"actor/kl_loss": 0.1}), (2, {"actor/kl_loss": 0.2, "reward/on_policy": 0.0})],
    )
    # the run was killed after step 2 and resumed from the step-1 checkpoint: step 2 is logged again
    _write(
        d / "20261122-050000.jsonl",
        [(2, {"actor/kl_loss": 0.25, "icpo/accept_rate": 0.5, "note": "x"}), (3, {})],
    )
    out = export_steps("icpo", tmp_path)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert out == tmp_path / "metrics" / "steps_icpo.jsonl"
    assert rows == [
        {"step": 1, "actor/kl": 0.1},
        {"step": 2, "actor/kl": 0.25, "icpo/accept_rate": 0.5},
        {"step": 3},
    ]


def test_luffy_and_control_metrics_reach_the_step_log(tmp_path):
    """The names the local engine logs for LUFFY and the reward controls survive the export."""
    d = tmp_path / metrics_dir("luffy")
    data = {
        "luffy/trace_truncated": 2.0,
        "perf/expert_tokens": 16.0,
        "reward/verifier_on_policy": 0.5,
        "x/y": 1,
    }
    _write(d / "20261122-040000.jsonl", [(1, data)])
    rows = [json.loads(line) for line in export_steps("luffy", tmp_path).read_text().splitlines()]
    assert rows == [
        {
            "step": 1,
            "luffy/trace_truncated": 2.0,
            "perf/expert_tokens": 16.0,
            "reward/verifier_on_policy": 0.5,
        }
    ]
