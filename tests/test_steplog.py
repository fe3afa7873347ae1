"""The step log (``metrics/steps_<run>.jsonl``): one reader and writer for both engines."""

from __future__ import annotations

import json
import math

from icpo_core import steplog


def test_append_then_reset_keeps_the_steps_up_to_the_resume_point(tmp_path):
    path = tmp_path / "metrics" / "steps_icpo.jsonl"
    assert steplog.reset(path, None) == [] and path.read_text() == ""
    for step in (1, 2, 3):
        steplog.append(path, step, {"reward/on_policy": step / 10, "icpo/accept_rate": math.nan})
    assert [r["step"] for r in steplog.read_steps(path)] == [1, 2, 3]
    assert steplog.read_steps(path)[0] == {"step": 1, "reward/on_policy": 0.1, "icpo/accept_rate": None}
    assert [r["step"] for r in steplog.reset(path, 2)] == [1, 2]
    assert [r["step"] for r in steplog.read_steps(path)] == [1, 2]


def test_write_keeps_the_last_row_of_a_step_in_step_order_with_sorted_keys(tmp_path):
    path = tmp_path / "steps.jsonl"
    steplog.write(path, [{"step": 2, "b": 1.0}, {"step": 1, "a": math.inf}, {"step": 2, "b": 2.0, "a": 0}])
    lines = path.read_text().splitlines()
    assert lines == ['{"a": null, "step": 1}', '{"a": 0, "b": 2.0, "step": 2}']
    assert [json.loads(line) for line in lines] == steplog.read_steps(path)


def test_a_cut_line_or_a_missing_file_reads_as_no_rows(tmp_path):
    path = tmp_path / "steps.jsonl"
    assert steplog.read_steps(path) == []
    path.write_text('{"step": 1, "x": 1}\n{"step": 2, "x"')  # killed mid-write
    assert steplog.read_steps(path) == [{"step": 1, "x": 1}]
