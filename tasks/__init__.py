"""Prefect tasks over the DVC stages: streamed `dvc repro --single-item`, plans, MLflow parent runs, artifacts."""
