"""The local engine: GRPO / ICPO with torch + transformers on CPU or one CUDA device (see trainer.py;
:func:`icpo_core.engines.local.trainer.train_local` trains one run). Nothing is imported here: a light module of
the package (``tiny``, ``data``) does not import torch through it."""
