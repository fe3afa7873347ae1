"""Run a command and hand its output over line by line, as it is written (no Prefect here).

Long stages (a verl training run writes for hours) must show up in the Prefect logs while they run, not as one
block at the end, so the child's stdout and stderr are merged into one pipe and forwarded line by line. The last
lines are kept for the failure message. The child gets its own process group, so cancelling the task (or any
exception in the caller) stops the whole tree: `dvc` -> `icpo` -> workers.
"""

from __future__ import annotations

import collections
import io
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    tail: list[str] = field(default_factory=list)  # the last output lines, oldest first
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def stream_command(
    cmd: Sequence[str],
    *,
    cwd: str | Path,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None],
    tail_lines: int = 40,
) -> CommandResult:
    """Run ``cmd`` in ``cwd``, calling ``on_line`` for every output line (stderr merged into stdout)."""
    import time

    start = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")  # Python stage commands would otherwise buffer a whole run
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        # split on "\n" only (text mode would also split on "\r" and log every progress-bar redraw)
        reader = io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline="\n")
        for raw in reader:
            # tqdm-style progress redraws arrive as \r-separated updates: keep only the newest one
            line = raw.rstrip("\n").rsplit("\r", 1)[-1].rstrip()
            if not line:
                continue
            tail.append(line)
            on_line(line)
        returncode = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (cancellation, timeout, error in on_line): stop the whole tree
            _kill_group(proc)
    return CommandResult(returncode=returncode, tail=list(tail), seconds=time.monotonic() - start)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
