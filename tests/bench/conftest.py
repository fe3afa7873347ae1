"""Fixtures of the bench tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from icpo_core.models.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
