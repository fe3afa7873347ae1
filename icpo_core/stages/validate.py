"""``icpo validate``: check params.yaml and print the resolved config."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="also print the algorithm params of this run")


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    out = params.model_dump(exclude={"profiles"})
    if args.run:
        out["run_algorithm"] = params.run_algorithm(args.run).model_dump()
    print(json.dumps(out, indent=2))
    return 0
