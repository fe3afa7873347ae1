"""Atomic writes: a stage's output either exists whole or not at all (never a partial file that looks valid)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from icpo_core.errors import DataError, UserError

GB = 1024**3


class DiskFullError(UserError):
    """A write ran out of disk space; the message names the file, the free space and the fix."""


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT, as an OSError or as the RuntimeError torch's writer turns it into."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or (
        isinstance(err, RuntimeError) and "file write failed" in text
    )


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem holding ``path`` (its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_free_space(path: str | Path, need: int, what: str, fix: str) -> None:
    """Stop before writing when ``path``'s disk has less than ``need`` bytes free (one line: need, free, fix)."""
    free = free_bytes(path)
    if free < need:
        raise DiskFullError(
            f"{what} needs ~{need / GB:.2f} GB free at {path}, only {free / GB:.2f} GB free; {fix}"
        )


def disk_full_error(err: BaseException, path: str | Path, fix: str) -> DiskFullError:
    return DiskFullError(
        f"disk full while writing {path} ({free_bytes(path) / GB:.2f} GB free; nothing partial was kept); {fix}"
    )


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``target`` (file or directory) in one rename.

    On an exception the temporary is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp_target = tmp / target.name
    try:
        yield tmp_target
        if not tmp_target.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written to {tmp_target}")
        if target.is_dir() and not target.is_symlink():
            # Directories cannot be replaced by rename; move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            target.rename(old / target.name)
            tmp_target.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_target, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def link_or_copy_tree(src: str | Path, dst: str | Path) -> int:
    """Hard-link every file of ``src`` into ``dst`` (made), copying where a link cannot be made (another
    filesystem, or one without hard links); returns the bytes copied (0 when everything was linked).

    For files never written in place again (a finished checkpoint's weights): two names, one copy on disk."""
    src, dst = Path(src), Path(dst)
    copied = 0
    for f in sorted(src.rglob("*")):
        out = dst / f.relative_to(src)
        if f.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, out)
        except OSError:
            shutil.copy2(f, out)
            copied += f.stat().st_size
    return copied


def atomic_write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return Path(target)


def atomic_write_json(target: str | Path, obj: Any) -> Path:
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_jsonl(path: str | Path, label: str = "") -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped); a bad line raises :class:`DataError` naming file:line."""
    path = Path(path)
    prefix = f"{label}: " if label else ""
    rows = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{prefix}{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{prefix}{path}:{lineno}: expected a JSON object")
            rows.append(row)
    return rows
