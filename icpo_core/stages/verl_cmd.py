"""``icpo verl-cmd --run X``: print the verl launch command of one run (shell-quoted, environment included).

Copy it to a GPU node, or let ``icpo train`` run it when ``train.engine: verl``.
"""

from __future__ import annotations

import argparse
import sys

from icpo_core import paths
from icpo_core.config import ParamsError
from icpo_core.engines.verl.job import shell_command
from icpo_core.engines.verl.overrides import override_list, train_file
from icpo_core.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a name from params.yaml `runs` (grpo, icpo, ...)")
    p.add_argument(
        "--overrides-only", action="store_true", help="print only the hydra overrides, one per line"
    )


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    if args.run not in params.runs:
        raise UserError(f"unknown run '{args.run}': params.yaml runs has {sorted(params.runs)}")
    try:
        if args.overrides_only:
            print("\n".join(override_list(params, args.run)))
        else:
            print(shell_command(params, args.run))
    except ParamsError as e:
        raise UserError(str(e)) from None
    data = train_file(params, args.run, args.run)
    if data != paths.TRAIN_PARQUET:
        print(
            f"note: the command reads {data} ({paths.TRAIN_PARQUET} without the rows that have no `target`); "
            f"`icpo train --run {args.run}` writes it before it launches",
            file=sys.stderr,
        )
    return 0
