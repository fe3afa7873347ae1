"""``icpo base-model``: materialise the base model as a Hugging Face folder (``models/base``).

Writes ``models/base`` atomically and ``metrics/base_model.json`` (source, parameter count, dtype, seconds).
"""

from __future__ import annotations

import argparse
import time

from icpo_core import paths
from icpo_core.io_utils import atomic_path, atomic_write_json
from icpo_core.models.base_model import materialise


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(paths.BASE_MODEL_DIR), help="output folder (default: %(default)s)")
    p.add_argument("--metrics", default=str(paths.METRICS_DIR / "base_model.json"), help="stats JSON")
    p.add_argument("--gguf", default=None, help="smollm2_gguf: use this GGUF file instead of the package's")


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    start = time.perf_counter()
    with atomic_path(args.out) as tmp:
        info = materialise(params.model, tmp, gguf_path=args.gguf)
    info["seconds"] = round(time.perf_counter() - start, 2)
    info["output"] = str(args.out)
    atomic_write_json(args.metrics, info)
    print(
        f"base-model: {info['origin']} ({info['source']}) -> {args.out}: {info['parameters']:,} parameters, "
        f"{info['dtype']}, {info['seconds']} s"
    )
    return 0
