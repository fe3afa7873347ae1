"""`icpo base-model`: placeholder until its issue lands."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default=None)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("icpo base-model is not implemented yet")
