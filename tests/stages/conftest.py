"""Fixtures shared by the stage tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from icpo_core.config import deep_merge

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A fresh project folder (cwd) with the repo's params.yaml; ``write(override)`` rewrites it."""
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(REPO_PARAMS.read_text())

    def write(override: dict[str, Any] | None = None) -> Path:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(deep_merge(raw, override or {})))
        return tmp_path

    write()
    return write
