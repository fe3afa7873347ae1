"""``icpo <stage>``: the command behind every DVC stage (see dvc.yaml)."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from icpo_core.config import ParamsError, apply_sets, dvc_study_problem, load_params, read_raw
from icpo_core.errors import UserError

# sub-command -> (module under icpo_core.stages, help). build_parser imports every stage module (each adds its
# own arguments); the stage modules keep their heavy imports (torch, transformers, datasets, vLLM, verl, MLflow)
# inside their functions, so building the parser stays cheap and `icpo validate` takes about a second.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("validate", "validate params.yaml and print the resolved config of the active profile"),
    "base-model": ("base_model", "materialise the base model as a Hugging Face folder (models/base)"),
    "prepare-train": (
        "prepare_train",
        "training set -> verl parquet (data/train.parquet) + synthetic eval sets",
    ),
    "prepare-demos": (
        "prepare_demos",
        "demo cache of solved problems with worked solutions (data/demos.parquet)",
    ),
    "prepare-val": (
        "prepare_val",
        "in-training validation benchmarks -> verl parquet (data/val/<name>.parquet)",
    ),
    "train": ("train", "train one run of params.yaml `runs` (GRPO / ICPO / ablations) with its engine"),
    "verl-cmd": ("verl_cmd", "print the verl launch command (hydra overrides) for one run"),
    "merge": ("merge", "merge a run's last checkpoint into a Hugging Face folder (verl.model_merger)"),
    "bench": ("bench", "LIMO-style benchmark of a run's merged model (or `base`)"),
    "grade": ("grade", "grade an existing predictions JSONL with math-verify"),
    "sync-mlflow": (
        "sync_mlflow",
        "send MLflow the training steps it misses (after an outage), from the step log",
    ),
    "report": ("report", "GRPO-vs-ICPO comparison table and training curves"),
    "compare": ("compare", "print the comparison table from MLflow runs"),
}


SET_HELP = (
    "set a params key for this command, KEY=VALUE (value read as YAML; repeatable), as `dvc exp run -S` does: "
    "e.g. -S profile=paper_qwen3_8b -S train.device=cpu"
)


DVC_STAGE_ENV = "DVC_STAGE"  # DVC sets it for every stage command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icpo", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "-S", "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    # -S also after the sub-command (`icpo verl-cmd --run icpo -S train.device=cpu`)
    sets = argparse.ArgumentParser(add_help=False)
    sets.add_argument(
        "-S", "--set", dest="sub_sets", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[sets])
        p.set_defaults(_module=module)
        mod = importlib.import_module(f"icpo_core.stages.{module}")
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        # Validate before anything heavy is imported or downloaded.
        sets = [*args.sets, *getattr(args, "sub_sets", [])]
        args.params_obj = load_params(args.params, sets)
        if os.environ.get(DVC_STAGE_ENV):
            # a DVC stage: the stages DVC expanded must be the active profile's study
            problem = dvc_study_problem(apply_sets(read_raw(args.params), sets), args.params_obj)
            if problem:
                raise UserError(problem)
        mod = importlib.import_module(f"icpo_core.stages.{args._module}")
        return int(mod.run(args) or 0)
    except ParamsError as e:
        print(f"icpo {args.command}: invalid params: {_one_line(e)}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"icpo {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"icpo {args.command}: error: disk full writing {e.filename or 'an output'}: free some space and "
            "rerun (a training resumes from its last complete checkpoint)",
            file=sys.stderr,
        )
        return 2


def _one_line(err: BaseException) -> str:
    """The message on one line (a user error is one line on stderr, whatever the message holds)."""
    return " ".join(line.strip() for line in str(err).splitlines())


if __name__ == "__main__":
    sys.exit(main())
