"""The comparison table artifact accepts the shapes a report table takes."""

from __future__ import annotations

from tasks.artifacts import table_rows


def test_table_rows_shapes():
    rows = [{"run": "grpo", "avg": 0.1}, {"run": "icpo", "avg": 0.2}]
    assert table_rows(rows) == rows
    assert table_rows({"rows": rows, "columns": ["run", "avg"]}) == rows
    assert table_rows({"grpo": {"avg": 0.1}, "icpo": {"avg": 0.2}}) == rows
    assert table_rows({"note": "x"}) is None
    assert table_rows([1, 2]) is None
