"""stream_command: lines arrive while the child runs, stderr is merged, the tail is kept, children are stopped."""

from __future__ import annotations

import os
import sys
import time

import pytest

from tasks.streaming import stream_command


def test_lines_are_forwarded_while_the_command_runs(tmp_path):
    seen: list[tuple[float, str]] = []
    script = (
        "import sys, time\n"
        "print('first')\n"
        "print('to stderr', file=sys.stderr)\n"
        "time.sleep(1.5)\n"
        "print('last')\n"
        "sys.exit(3)\n"
    )
    result = stream_command(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=dict(os.environ),
        on_line=lambda line: seen.append((time.monotonic(), line)),
    )
    assert [line for _, line in seen] == ["first", "to stderr", "last"]
    # not buffered to the end: "first" came >= 1 s before "last"
    assert seen[2][0] - seen[0][0] > 1.0
    assert result.returncode == 3 and not result.ok
    assert result.tail == ["first", "to stderr", "last"]


def test_tail_keeps_only_the_last_lines_and_progress_redraws_collapse(tmp_path):
    script = "for i in range(100): print(i)\nprint('10%\\r50%\\r100%')"
    lines: list[str] = []
    result = stream_command([sys.executable, "-c", script], cwd=tmp_path, on_line=lines.append, tail_lines=5)
    assert result.ok
    assert result.tail == ["96", "97", "98", "99", "100%"]
    assert len(lines) == 101


def test_an_error_in_the_consumer_stops_the_child_tree(tmp_path):
    marker = tmp_path / "grandchild_survived"
    # the child starts a grandchild that would write the marker after 3 s
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3); open({str(marker)!r}, \"w\")'])\n"
        "print('started', flush=True)\n"
        "time.sleep(30)\n"
    )

    def explode(line: str) -> None:
        raise KeyboardInterrupt  # what a cancelled task looks like from inside

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        stream_command([sys.executable, "-c", script], cwd=tmp_path, on_line=explode)
    assert time.monotonic() - start < 15
    time.sleep(3.5)
    assert not marker.exists()
