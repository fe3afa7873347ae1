"""verl's FSDP2 actor at world size 2 on CPU (gloo, two processes) against world size 1 on the same batch.

One ICPO ``update_actor`` (IEF rows in the batch, the project's loss): at world size 2 each rank trains half the
rows, verl all-gathers the per-micro-batch metric sums and :func:`finalize_actor_metrics` turns them into the
same token means as at world size 1; verl's checkpoint manager writes one shard per rank, and ``merge@``'s merge
(:func:`icpo_core.engines.local.merger.merge_checkpoint`) joins them into a model whose logits equal the world
size 1 run's. Real processes and collectives, no Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from verl_fixtures import free_port, write_tiny_llama

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def _ranks(world: int, out: Path, model_dir: Path, train: Path, demos: Path) -> list[subprocess.Popen]:
    port = str(free_port())
    procs = []
    out.mkdir(parents=True)
    for rank in range(world):
        env = {
            **os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "VERL_PLATFORM": "cpu",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        }  # fmt: skip
        log = (out / f"rank{rank}.log").open("w")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "verl_rank.py"),
                    str(out),
                    str(model_dir),
                    str(train),
                    str(demos),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        )
    return procs


def _logits(model_dir: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.timeout(600)
def test_world_size_2_matches_world_size_1(tmp_path, tokenizer, train_parquet, demos_parquet):
    from icpo_core.engines.local.merger import merge_checkpoint

    model_dir = write_tiny_llama(tmp_path / "model", tokenizer)
    runs = {w: tmp_path / f"ws{w}" for w in (1, 2)}
    procs = {w: _ranks(w, runs[w], model_dir, train_parquet, demos_parquet) for w in runs}
    for w, ps in procs.items():
        for rank, p in enumerate(ps):
            assert p.wait(timeout=500) == 0, (runs[w] / f"rank{rank}.log").read_text()[-3000:]

    actor2 = runs[2] / "global_step_1/actor"
    assert sorted(p.name for p in actor2.glob("model_world_size_*")) == [
        "model_world_size_2_rank_0.pt",
        "model_world_size_2_rank_1.pt",
    ]
    m1, m2 = (json.loads((runs[w] / "metrics.json").read_text()) for w in (1, 2))
    assert m1["n_ief_rows"] > 0  # IEF rows in the batch
    assert m1["actor/ief_token_frac"] > 0
    for key in ("actor/ief_prob", "actor/ief_token_frac", "actor/pg_clipfrac", "actor/ppo_kl"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), key  # sums over both ranks

    merged = {}
    for w in runs:
        merged[w] = tmp_path / f"merged{w}"
        merge_checkpoint(runs[w] / "global_step_1/actor", merged[w], "keep", base_dir=model_dir)
    base, one, two = _logits(model_dir), _logits(merged[1]), _logits(merged[2])
    assert float((one - base).abs().max()) > 1e-4  # the update moved the model
    torch.testing.assert_close(two, one, atol=1e-5, rtol=1e-5)
