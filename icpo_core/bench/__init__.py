"""LIMO-style benchmarks: a registry of benchmarks as data (``benchmarks.yaml``), loaders for the verl/LUFFY
parquet and LIMO jsonl layouts, generation backends (``hf``, ``vllm``), one grader (:mod:`icpo_core.grading`)
and avg@n / pass@k metrics. :class:`~icpo_core.bench.runner.BenchRunner` ties them together, resumably.
"""
