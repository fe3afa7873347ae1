"""Where every stage reads and writes, relative to the project root. dvc.yaml uses the same paths."""

from __future__ import annotations

from pathlib import Path

BASE_MODEL_DIR = Path("models/base")
TRAIN_PARQUET = Path("data/train.parquet")
DEMOS_PARQUET = Path("data/demos.parquet")
EVAL_DIR = Path("data/eval")  # synthetic held-out levels, LIMO-style jsonl: <benchmark>.jsonl
VAL_DIR = Path("data/val")  # in-training validation benchmarks, verl parquet: <benchmark>.parquet
METRICS_DIR = Path("metrics")  # per-stage stats (DVC metrics)
RUNS_DIR = Path("runs")
BENCH_DIR = Path("bench")
REPORTS_DIR = Path("reports")
MLFLOW_DIR = Path("mlflow")


def instance(run: str, seed: int | None) -> str:
    """One training run at one training seed, ``<run>_s<seed>`` (``grpo_s0``): the unit DVC trains, merges and
    benches. Every path helper below takes an instance name. ``base`` (the untrained model) and ``seed=None``
    (a single-seed run outside the study) keep the plain run name."""
    return run if seed is None or run == "base" else f"{run}_s{seed}"


def run_dir(run: str) -> Path:
    return RUNS_DIR / run


def val_parquet(benchmark: str, val_dir: str | Path = VAL_DIR) -> Path:
    """One validation benchmark in the training parquet's schema (``prepare_val`` writes it, verl reads it)."""
    return Path(val_dir) / f"{benchmark}.parquet"


def checkpoints_dir(run: str) -> Path:
    """verl layout: global_step_N/actor/..., latest_checkpointed_iteration.txt."""
    return run_dir(run) / "checkpoints"


def train_metrics_jsonl(run: str) -> Path:
    """One JSON object per training step (key ``step`` plus metric names); DVC plots and the report read it."""
    return METRICS_DIR / f"steps_{run}.jsonl"


def train_summary(run: str) -> Path:
    return METRICS_DIR / f"train_{run}.json"


def merged_dir(run: str) -> Path:
    """Hugging Face folder of the final actor. ``base`` maps to the base model."""
    return BASE_MODEL_DIR if run == "base" else run_dir(run) / "merged"


def bench_dir(run: str) -> Path:
    return BENCH_DIR / run


def bench_metrics(run: str) -> Path:
    return METRICS_DIR / f"bench_{run}.json"
