"""Fixtures of the local-engine tests: a tiny random Llama with a real BPE tokenizer, and tiny projects."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from icpo_core.models.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


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


# vLLM's CPU attention has no kernels for head_dim 16 (the default tiny model): 4 heads of 64.
VLLM_TINY_HIDDEN = 256


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama that vLLM's CPU build can run (head_dim 64), with tied embeddings."""
    from icpo_core.models.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny_vllm") / "model", hidden=VLLM_TINY_HIDDEN)


@pytest.fixture(scope="session")
def vllm_engine(vllm_model_dir: Path):
    """ONE real vLLM engine (CPU build, in-process, eager) for all local-engine tests: a start costs seconds.

    Every test pushes the weights it needs first, so test order does not matter.
    """
    from transformers import AutoTokenizer

    from icpo_core.config import TrainVllmParams
    from icpo_core.engines.local.vllm_rollout import VLLMRolloutEngine

    tok = AutoTokenizer.from_pretrained(vllm_model_dir)
    engine = VLLMRolloutEngine(
        vllm_model_dir,
        tok,
        TrainVllmParams(kv_cache_gib=1, dtype="float32"),
        eos_ids=[tok.eos_token_id],
        device_type="cpu",
    )
    yield engine
    engine.close()


@pytest.fixture
def vllm_project(tiny_project):
    """Factory like ``tiny_project`` whose models/base is the vLLM-compatible tiny model."""
    from icpo_core.models.tiny import write_tiny_model

    def make(name: str = "proj", **kwargs):
        root, params = tiny_project(name, **kwargs)
        write_tiny_model(root / "models" / "base", hidden=VLLM_TINY_HIDDEN)
        return root, params

    return make
