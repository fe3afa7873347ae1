"""A full disk for real in tests: a size-limited tmpfs the test mounts, and a filler file that uses it up."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_fs(folder: Path, size_mb: int):
    """A tmpfs of ``size_mb`` MiB at ``folder``, unmounted afterwards; skips only where mounting is not allowed."""
    folder.mkdir(parents=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        pytest.skip(
            f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): needs root or CAP_SYS_ADMIN"
        )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on ``folder``'s filesystem."""
    st = os.statvfs(folder)
    filler = folder / f"filler-{uuid.uuid4().hex}"
    with filler.open("wb") as f:
        remaining = st.f_bavail * st.f_frsize - leave
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            n = f.write(chunk[: min(len(chunk), remaining)])
            remaining -= n
        f.flush()
        os.fsync(f.fileno())
    return filler
