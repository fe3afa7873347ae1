"""Serve the deployments of prefect.yaml from this process: no work pool, no worker (the developer path).

    prefect server start --host 127.0.0.1 &           # or any Prefect API (PREFECT_API_URL)
    python -m flows.serve                             # all deployments of prefect.yaml, with their schedules
    python -m flows.serve --only bench-nightly

prefect.yaml stays the single source of the schedules, parameters and concurrency limits: this module reads it
and turns each entry into ``flow.to_deployment(...)``, then ``prefect.serve`` polls for runs (scheduled ones and
those triggered from the UI) and runs each in a subprocess in this checkout.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import yaml

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def load_deployment_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The ``deployments`` entries of prefect.yaml (YAML anchors resolved)."""
    return list((yaml.safe_load(path.read_text()) or {}).get("deployments") or [])


def to_runner_deployment(spec: dict[str, Any]):
    """A prefect.yaml deployment entry as a ``RunnerDeployment`` of the flow it names."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    file, _, attr = spec["entrypoint"].partition(":")
    module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
    flow_obj = getattr(module, attr)
    limit = spec.get("concurrency_limit")
    if isinstance(limit, dict):
        limit = ConcurrencyLimitConfig(
            limit=limit["limit"],
            collision_strategy=ConcurrencyLimitStrategy(limit.get("collision_strategy", "ENQUEUE")),
        )
    schedules = [Cron(s["cron"], timezone=s.get("timezone", "UTC")) for s in spec.get("schedules") or []]
    return flow_obj.to_deployment(
        name=spec["name"],
        schedules=schedules or None,
        parameters=spec.get("parameters") or {},
        tags=spec.get("tags"),
        description=spec.get("description"),
        concurrency_limit=limit,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", default=None, help="deployment names to serve (default: all)")
    args = p.parse_args(argv)
    from prefect import serve

    specs = [s for s in load_deployment_specs() if not args.only or s["name"] in args.only]
    if not specs:
        p.error(f"no deployment named {args.only} in {PREFECT_YAML.name}")
    serve(*[to_runner_deployment(s) for s in specs], pause_on_shutdown=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
