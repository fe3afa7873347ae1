"""Fixtures for the data tests: params built from the repo's params.yaml, a tiny tokenizer, offline hub."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from icpo_core.config import Params, deep_merge, parse_params

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture
def make_params(tmp_path, monkeypatch) -> Callable[[dict[str, Any]], Params]:
    """Params = the repo's params.yaml with ``override`` merged in, validated with ``tmp_path`` as project root."""
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(REPO_PARAMS.read_text())

    def make(override: dict[str, Any] | None = None) -> Params:
        return parse_params(deep_merge(raw, override or {}))

    return make


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A folder holding only the tiny byte-level BPE tokenizer.json (what the token filter reads)."""
    from icpo_core.models.tiny import build_tokenizer

    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture
def offline_hub(monkeypatch):
    """The hub is unreachable and datasets / huggingface_hub know it (fail fast instead of retrying)."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
