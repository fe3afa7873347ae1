"""The ``icpo`` block of the composed verl config, both ways: written from the typed algorithm params
(:func:`icpo_overrides`, by :mod:`.overrides`) and read back as them (:func:`algorithm_from_config`, by the
trainer and the agent-loop manager).

config/icpo_trainer.yaml states no value in the block (every key is ``???``), so the only defaults are
:class:`~icpo_core.config.AlgorithmParams`'s. No verl / torch import here.
"""

from __future__ import annotations

from typing import Any

from icpo_core.config import AlgorithmParams

# The block's keys that are not algorithm params: data/demos.parquet, the suffix every training prompt carries
# (the demos get it too), the seed of demo draws and replaced slots (numpy default_rng([seed, step])).
ICPO_LAUNCH_KEYS = ("demo_path", "prompt_suffix", "seed")


def icpo_overrides(
    algo: AlgorithmParams, *, demo_path: str | None, prompt_suffix: str, seed: int
) -> dict[str, Any]:
    """The ``icpo`` block of a run: every :class:`~icpo_core.config.AlgorithmParams` field (the yaml states none:
    each is ``???`` there) plus the :data:`ICPO_LAUNCH_KEYS`. ``demo_path`` must be absolute (Ray workers do not
    share the driver's cwd)."""
    out = {f"icpo.{key}": value for key, value in algo.model_dump().items()}
    out.update({"icpo.demo_path": demo_path, "icpo.prompt_suffix": prompt_suffix, "icpo.seed": seed})
    return out


def algorithm_from_config(icpo_cfg: Any) -> AlgorithmParams:
    """The typed algorithm params of a composed ``icpo`` block (the launch keys ignored), how every verl-side
    module reads them: no default is stated outside :class:`~icpo_core.config.AlgorithmParams`.

    A value still ``???`` (config/icpo_trainer.yaml; :func:`icpo_overrides` sets them all) raises omegaconf's
    ``MissingMandatoryValue`` naming the key; a key absent from a hand-built block takes the typed default."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(icpo_cfg, DictConfig):
        raw = OmegaConf.to_container(icpo_cfg, resolve=True, throw_on_missing=True)
    else:
        raw = dict(icpo_cfg)
    return AlgorithmParams(**{k: raw[k] for k in AlgorithmParams.model_fields if k in raw})
