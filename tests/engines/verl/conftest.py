"""Fixtures for the verl engine tests (helpers live in verl_fixtures.py)."""

from __future__ import annotations

import pytest
from verl_fixtures import make_tokenizer, project_rows, write_demos


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def train_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    project_rows(4).to_parquet(path)
    return path


@pytest.fixture
def demos_parquet(tmp_path):
    return write_demos(tmp_path / "demos.parquet")
