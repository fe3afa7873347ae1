"""Training engines: `local` (torch + transformers, in-process) and `verl` (Ray + vLLM, GPU nodes)."""
