"""The worker program on its own: the line protocol the Grader speaks, under the module name the Grader starts."""

from __future__ import annotations

import json
import subprocess
import sys

from icpo_core.grading import pool, worker


def test_the_grader_starts_this_module():
    assert worker.__name__ == pool.WORKER_MODULE


def test_worker_protocol_ready_then_one_verdict_per_task_then_exit_on_eof():
    proc = subprocess.Popen(
        [sys.executable, "-m", pool.WORKER_MODULE, "--mem-mb", "3072"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tasks = [
        {"i": 0, "a": "\\frac{1}{2}", "g": "0.5"},
        {"i": 1, "a": "3", "g": "4"},
        {"i": 7, "a": "__import__('os')", "g": "1"},
    ]
    try:
        out, err = proc.communicate("".join(json.dumps(t) + "\n" for t in tasks), timeout=300)
    finally:
        proc.kill()
    lines = [json.loads(x) for x in out.splitlines()]
    assert proc.returncode == 0, err
    assert lines[0] == {"ready": proc.pid}
    assert [(m["i"], m["ok"]) for m in lines[1:]] == [(0, True), (1, False), (7, False)]
    assert lines[1]["reason"] == "correct" and lines[2]["reason"] == "wrong"
    assert "RuntimeWarning" not in err  # run as a module the package did not import first
