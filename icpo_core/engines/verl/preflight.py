"""Checks :func:`~.overrides.launch` runs around a verl launch, for failures verl itself would hide.

- :func:`check_plugin`: verl imports the ``verl.plugins`` entry points on ``import verl`` and swallows their
  import errors, so a missing or broken entry point surfaces only at step 1 ("Unknown advantage estimator
  icpo"), after start-up and validation. Checked in a fresh interpreter before launching.
- :func:`check_ief_prompt_budget`: verl's agent loop left-truncates any prompt longer than
  ``rollout.prompt_length`` with a warning only, and IEF prompts put the demos first, so an over-long IEF
  prompt would silently lose its demos. The longest IEF prompt the data can build is measured and refused.
- :func:`check_verl_version`: the launcher, the task runner and the ICPO loss mirror verl 0.9.1 internals
  (``RayPPOTrainer`` is marked for removal upstream), so any other installed verl is refused before launch.
- :func:`attention_warning`: without flash-attn on a GPU the launch falls back to SDPA and unpadded sequences
  (:data:`.overrides.SDPA_FALLBACK`), the supported first run; the note says so, and whether flash-attn publishes
  a wheel for the installed torch / CUDA (:func:`icpo_core.engines.devices.flash_attn_wheel`) or compiles.
- :func:`check_checkpoint_space`: verl writes a checkpoint every ``save_freq`` steps, hours into a run; the
  launch compares the free disk with one checkpoint's size first (:mod:`icpo_core.engines.estimates`), as the
  local engine does, and stops with one line.
- :func:`steps_done`: which steps a launch logged, so a run that exits 0 having trained nothing (verl's
  resume-at-a-boundary bug class) is reported as a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from icpo_core import paths
from icpo_core.algorithm import build_ief_messages, off_policy_source
from icpo_core.config import AlgorithmParams, Params
from icpo_core.engines import devices, estimates
from icpo_core.engines.local.data import load_demo_pool
from icpo_core.engines.verl.metrics import read_launch_log
from icpo_core.errors import UserError
from icpo_core.io_utils import check_free_space

PLUGIN_GROUP = "verl.plugins"
# the exact pin (pyproject.toml): RayPPOTrainer and the hooked internals change upstream
VERL_VERSION = "0.9.1"
PLUGIN_MODULE = "icpo_core.engines.verl.plugin"
_PROBE = (
    "import verl, json\n"
    "from verl.trainer.ppo import core_algos as c\n"
    "print(json.dumps({'adv': 'icpo' in c.ADV_ESTIMATOR_REGISTRY, 'loss': 'icpo' in c.POLICY_LOSS_REGISTRY}))\n"
)


def check_plugin(python: str = sys.executable, timeout_s: float = 300.0) -> None:
    """Refuse to launch unless ``import verl`` registers the ``icpo`` advantage estimator and policy loss."""
    fix = "reinstall the project in the environment that runs verl (`pip install -e .`)"
    eps = [ep for ep in metadata.entry_points(group=PLUGIN_GROUP) if ep.value == PLUGIN_MODULE]
    if not eps:
        raise UserError(
            f"the `icpo` advantage estimator is not registered: no `{PLUGIN_GROUP}` entry point names "
            f'{PLUGIN_MODULE} (pyproject.toml [project.entry-points."{PLUGIN_GROUP}"]); {fix}'
        )
    r = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s)
    found = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else {}
    if not (found.get("adv") and found.get("loss")):
        detail = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"registered: {found}"
        raise UserError(
            f"`import verl` did not register the `icpo` advantage estimator / policy loss (verl swallows plugin "
            f"import errors; try `python -c 'import {PLUGIN_MODULE}'`): {detail}; {fix}"
        )


def ief_prompt_length(params: Params, algo: AlgorithmParams) -> int:
    """Rollout prompt budget: the plain prompt plus k demos of up to the same length each.

    verl left-truncates any prompt longer than ``rollout.prompt_length`` (demos first), so IEF prompts need
    room; sources without demos (GRPO, ICPO without demos, LUFFY: its traces are responses) keep ``max_prompt_length``. After the prompt restore the extra padding costs the actor nothing.
    """
    base = params.train.max_prompt_length
    return base * (1 + algo.k_demos) if off_policy_source(algo).with_demos else base


def check_verl_version(installed: str | None = None) -> None:
    """Refuse a launch unless the installed verl is exactly the pinned version."""
    if installed is None:
        try:
            installed = metadata.version("verl")
        except metadata.PackageNotFoundError:
            installed = None
    if installed != VERL_VERSION:
        raise UserError(
            f"train.engine verl needs verl=={VERL_VERSION} (the ICPO hooks mirror its internals), found "
            f"{installed or 'no verl'}; reinstall the project's pins (`make setup-gpu`, or `pip install -e .`)"
        )


def attention_warning(
    on_cpu: bool, flash_attn: bool, torch_version: str | None = None, torch_cuda: str | None = None
) -> str | None:
    """The note of a GPU launch without flash-attn (None on CPU, where SDPA is the setting, or with it): SDPA is
    the supported first run, and whether a flash-attn wheel matches the installed torch / CUDA (else the opt-in
    ``make setup-gpu FLASH_ATTN=1`` compiles it). The versions default to the installed torch's."""
    if on_cpu or flash_attn:
        return None
    if torch_version is None:
        import torch

        torch_version, torch_cuda = torch.__version__, torch.version.cuda
    return devices.flash_attn_note(torch_version, torch_cuda)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def check_checkpoint_space(params: Params, name: str, root: str | Path = ".") -> int:
    """Stop before launching when the checkpoint folder's disk cannot hold one more verl checkpoint of the base
    model (:func:`.estimates.checkpoint_bytes`: fp32 weights + AdamW state); returns the estimate in bytes.

    verl writes checkpoint N before it drops the oldest one beyond ``train.keep_checkpoints``, so one more is what
    each save needs."""
    root = Path(root)
    n = estimates.safetensors_parameters(root / paths.BASE_MODEL_DIR)
    need = estimates.checkpoint_bytes(n, lora=params.train.lora.enabled)
    check_free_space(
        root / paths.checkpoints_dir(name),
        need,
        f"train {name} (verl: one more checkpoint of {_count(n)} parameters, fp32 weights + AdamW state)",
        "free some space (or lower train.keep_checkpoints) and rerun; a run resumes from its last checkpoint",
    )
    return need


def _token_len(tokenizer, messages: list[dict[str, str]]) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def longest_ief_prompt(params: Params, run: str, root: str | Path = ".") -> tuple[int, int]:
    """``(longest IEF prompt in tokens, rollout.prompt_length)`` for ``run`` on the prepared data.

    Worst case of the paper's [D; q] (section 3.1): the longest training prompt that passes
    ``data.max_prompt_length`` with the ``k_demos`` longest demos, rendered with the base model's chat template
    exactly as :func:`icpo_core.algorithm.build_ief_messages` builds them for the rollout.
    """
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    root = Path(root)
    algo = params.run_algorithm(run)
    budget = ief_prompt_length(params, algo)
    tok = AutoTokenizer.from_pretrained(root / paths.BASE_MODEL_DIR)
    prompts = pq.read_table(root / paths.TRAIN_PARQUET, columns=["prompt"]).column("prompt").to_pylist()
    plain = [(n, p) for p in prompts if (n := _token_len(tok, list(p))) <= params.train.max_prompt_length]
    if not plain:
        return 0, budget
    longest_plain = max(plain, key=lambda x: x[0])[1]
    suffix = params.train_prompt_suffix
    pool = load_demo_pool(root / paths.DEMOS_PARQUET, algo.k_demos)
    fmt = algo.demo_format

    def demo_len(d) -> int:
        return _token_len(tok, build_ief_messages([{"role": "user", "content": ""}], [d], fmt, suffix))

    demos = sorted(pool.demos, key=demo_len, reverse=True)[: algo.k_demos]
    return _token_len(tok, build_ief_messages(list(longest_plain), demos, fmt, suffix)), budget


def check_ief_prompt_budget(params: Params, run: str, root: str | Path = ".") -> None:
    """Refuse an ICPO launch whose IEF prompts would be left-truncated (their demos cut) by the rollout."""
    algo = params.run_algorithm(run)
    if not off_policy_source(algo).with_demos:
        return
    longest, budget = longest_ief_prompt(params, run, root)
    if longest > budget:
        raise UserError(
            f"runs.{run}: IEF prompts reach {longest} tokens but actor_rollout_ref.rollout.prompt_length is "
            f"{budget} (train.max_prompt_length {params.train.max_prompt_length} x (1 + algorithm.k_demos "
            f"{algo.k_demos})); verl would silently cut the demos off the front. Raise train.max_prompt_length "
            f"to at least {-(-longest // (1 + algo.k_demos))}, or lower algorithm.k_demos, or use shorter demos"
        )


def steps_done(files: Iterable[Path]) -> list[int]:
    """The steps logged in verl ``file``-logger files (``{"step": N, "data": {...}}`` lines), sorted."""
    return sorted({rec["step"] for f in files if f.is_file() for rec in read_launch_log(f)})
