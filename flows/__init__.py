"""Prefect flows that drive the DVC pipeline: `reproduce`, `ablations`, and their scheduled deployments."""
