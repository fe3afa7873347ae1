"""The GRPO-vs-ICPO report: paper-style table (``table``) from bench metrics files or MLflow runs, and training
curves (``curves``) from the per-step metrics JSONL."""
