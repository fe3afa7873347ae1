"""Fixtures of the local-engine tests: a tiny random Llama with a real BPE tokenizer, and tiny projects."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from icpo_core.engines.local.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, tok


@pytest.fixture(scope="session")
def shared_mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the in-process tests (creating a store costs ~8 s of migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tiny_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_mlflow_uri: str):
    """Factory: a tiny project folder (model, data, params.yaml) and its validated Params."""
    from icpo_core.config import load_params
    from icpo_core.engines.local.tiny import make_tiny_project

    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_mlflow_uri)

    def make(name: str = "proj", **kwargs):
        root = make_tiny_project(tmp_path / name, **kwargs)
        return root, load_params(root / "params.yaml")

    return make
