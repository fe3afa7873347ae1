"""Data for the pipeline: the synthetic offline set, OpenR1 training sets, demo caches, the verl parquet schema.

Stage commands (``icpo prepare-train`` / ``icpo prepare-demos``) call :mod:`icpo_core.data.train_sources` and
:mod:`icpo_core.data.demo_sources`; both load hub datasets and local copies through :mod:`icpo_core.data.loading`.
"""
