"""Conventions every MLflow run of the project shares: string params, the git commit, tags from the environment."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PARENT_ENV = "ICPO_MLFLOW_PARENT_RUN_ID"
TAG_ENV_PREFIX = "ICPO_TAG_"


def flatten(obj: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}`` with string values (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name, sep))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return out


def git_commit(root: str | Path = ".") -> str:
    """HEAD of the project checkout (``-dirty`` when tracked files changed), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{head}-dirty" if dirty else head
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def env_tags() -> dict[str, str]:
    """``ICPO_TAG_<NAME>=value`` environment variables as ``{<name lowercased>: value}``."""
    return {
        k.removeprefix(TAG_ENV_PREFIX).lower(): v
        for k, v in os.environ.items()
        if k.startswith(TAG_ENV_PREFIX) and len(k) > len(TAG_ENV_PREFIX)
    }
