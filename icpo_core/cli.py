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

# sub-command -> (module under icpo_core.stages, help). A stage module imports what it runs at its top (the
# engines: torch, verl), so the CLI imports only the stage of the command it runs (build_parser), by name: the
# project's one import inside a function, at the top of the import graph (nothing imports the CLI), which keeps
# `icpo validate` and `icpo --help` at about a second.
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
    "regime": (
        "regime",
        "groups with reward signal 0-shot vs with demos on the base model (metrics/regime.json)",
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


def _add_sets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-S", "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )


def _split(argv: list[str]) -> tuple[argparse.Namespace, str | None]:
    """The top-level options (``--params``, ``-v``, every ``-S``, before or after the sub-command) and the
    sub-command of ``argv``, importing no stage (None when ``argv`` names no known sub-command)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--params", default="params.yaml")
    pre.add_argument("-v", "--verbose", action="store_true")
    _add_sets(pre)
    top, rest = pre.parse_known_args(argv)
    word = next((w for w in rest if not w.startswith("-")), None)
    return top, word if word in COMMANDS else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every sub-command with its help; ``command``'s stage module is imported and adds its arguments."""
    parser = argparse.ArgumentParser(prog="icpo", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _add_sets(parser)
    sets = argparse.ArgumentParser(add_help=False)  # -S after the sub-command too
    _add_sets(sets)
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[sets])
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(f"icpo_core.stages.{module}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    top, command = _split(argv)
    if command is None or {"-h", "--help"} & set(argv):
        build_parser(command).parse_args(argv)  # help, or a usage error: argparse exits here
    logging.basicConfig(
        level=logging.DEBUG if top.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        # Validate before the stage (and what it imports: torch, transformers, verl) is imported or anything
        # downloaded.
        params = load_params(top.params, top.sets)
        if os.environ.get(DVC_STAGE_ENV):
            # a DVC stage: the stages DVC expanded must be the active profile's study
            problem = dvc_study_problem(apply_sets(read_raw(top.params), top.sets), params)
            if problem:
                raise UserError(problem)
        args = build_parser(command).parse_args(argv)
        args.params_obj = params
        args.sets = top.sets  # every -S of the command line, wherever it stood
        mod = importlib.import_module(f"icpo_core.stages.{args._module}")
        return int(mod.run(args) or 0)
    except ParamsError as e:
        print(f"icpo {command}: invalid params: {_one_line(e)}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"icpo {command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"icpo {command}: error: disk full writing {e.filename or 'an output'}: free some space and "
            "rerun (a training resumes from its last complete checkpoint)",
            file=sys.stderr,
        )
        return 2


def _one_line(err: BaseException) -> str:
    """The message on one line (a user error is one line on stderr, whatever the message holds)."""
    return " ".join(line.strip() for line in str(err).splitlines())


if __name__ == "__main__":
    sys.exit(main())
