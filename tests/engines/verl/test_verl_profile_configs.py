"""Each profile's FULL verl config, composed on CPU from its params as the launch composes it, through verl's own
config classes (``verl.utils.config.omega_conf_to_dataclass``, as verl's trainer and workers build them) and
verl's ``validate_config``: a key verl would reject, or a value its dataclasses refuse, fails here rather than
at start-up on a GPU node.

Profiles: ``embedded`` with ``train.engine: verl, train.device: cpu`` (the CPU keys of ``cpu_overrides``), and
the paper profiles as a GPU node resolves them (the one check that needs a GPU, ``overrides.on_cpu`` for
``train.device: auto``, is answered as there; flash-attn present or not). Every run of params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from icpo_core.config import deep_merge, parse_params
from icpo_core.engines.verl import overrides as ov

ROOT = Path(__file__).resolve().parents[3]
CONFIG_DIR = str(Path(ov.__file__).parent / "config")
RUNS = list(yaml.safe_load((ROOT / "params.yaml").read_text())["runs"])
# (profile, params over it, GPU node, flash-attn installed, runs)
CASES = {
    "embedded_cpu": ("embedded", {"train": {"engine": "verl", "device": "cpu"}}, False, False, RUNS),
    "paper_qwen3_1_7b": ("paper_qwen3_1_7b", {}, True, True, RUNS),
    "paper_qwen3_1_7b_sdpa": ("paper_qwen3_1_7b", {}, True, False, ["grpo", "icpo"]),  # SDPA_FALLBACK's keys
    "paper_qwen3_8b": ("paper_qwen3_8b", {}, True, True, RUNS),
}


def _params(profile: str, extra: dict):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = profile
    return parse_params(deep_merge(raw, extra))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project root whose ``models/base`` is a real (tiny) model folder: verl's HFModelConfig loads it."""
    from icpo_core.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("proj")
    write_tiny_model(root / "models" / "base")
    return root


def _compose(params, run: str, root: Path, gpu: bool, flash_attn: bool, extra: list[str] = ()):
    from hydra import compose, initialize_config_dir

    with pytest.MonkeyPatch.context() as mp:
        if gpu:  # the GPU node's answers (this machine has no CUDA, maybe no flash-attn)
            mp.setattr(ov, "on_cpu", lambda p: p.train.device == "cpu")
        mp.setattr(ov, "flash_attn_available", lambda: flash_attn)
        overrides = [o for o in ov.override_list(params, run, root) if not o.startswith("hydra.")]
    assert ("trainer.device=cpu" in overrides) is not gpu
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("icpo_trainer", overrides=[*overrides, *extra])


def _ref_config(cfg):
    """The reference policy's config as verl 0.9.1's worker builds it (``ActorRolloutRefWorker.init_model``:
    its ``log_prob_*`` keys renamed to the actor's before ``omega_conf_to_dataclass``)."""
    from omegaconf import OmegaConf, open_dict
    from verl.utils.config import omega_conf_to_dataclass

    ref = OmegaConf.create(OmegaConf.to_container(cfg.actor_rollout_ref.ref, resolve=True))
    with open_dict(ref):
        ref.ppo_mini_batch_size = cfg.actor_rollout_ref.actor.ppo_mini_batch_size
        ref.ppo_micro_batch_size = ref.pop("log_prob_micro_batch_size", None)
        ref.ppo_micro_batch_size_per_gpu = ref.pop("log_prob_micro_batch_size_per_gpu", None)
        ref.use_dynamic_bsz = ref.pop("log_prob_use_dynamic_bsz", False)
        ref.ppo_max_token_len_per_gpu = ref.pop("log_prob_max_token_len_per_gpu", None)
    return omega_conf_to_dataclass(ref)


def _build_sections(cfg) -> dict:
    """Every section of ``cfg`` verl turns into its config dataclasses for this run, built as verl builds them."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    OmegaConf.to_container(cfg.icpo, throw_on_missing=True)  # the launch set every icpo key
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    arr = cfg.actor_rollout_ref
    built = {
        "actor": omega_conf_to_dataclass(arr.actor),
        "rollout": omega_conf_to_dataclass(arr.rollout),
        "checkpoint_engine": omega_conf_to_dataclass(arr.rollout.checkpoint_engine),
        "model": omega_conf_to_dataclass(arr.model),
        "algorithm": omega_conf_to_dataclass(cfg.algorithm),
    }
    if need_reference_policy(cfg):
        built["ref"] = _ref_config(cfg)
    if need_critic(cfg):
        built["critic"] = omega_conf_to_dataclass(cfg.critic)
    return built


@pytest.mark.parametrize("case", list(CASES))
def test_every_profiles_full_config_passes_verls_config_classes(project, case):
    from verl.trainer.config import AlgoConfig
    from verl.workers.config import FSDPActorConfig, HFModelConfig, RolloutConfig

    from icpo_core.engines.verl.icpo_block import algorithm_from_config

    profile, extra, gpu, flash_attn, runs = CASES[case]
    params = _params(profile, extra)
    for run in runs:
        cfg = _compose(params, run, project, gpu, flash_attn)
        built = _build_sections(cfg)
        algo = params.run_algorithm(run)
        actor, rollout = built["actor"], built["rollout"]
        assert isinstance(actor, FSDPActorConfig) and isinstance(rollout, RolloutConfig), (case, run)
        assert isinstance(built["model"], HFModelConfig) and isinstance(built["algorithm"], AlgoConfig)
        # the values the run trains with survive verl's own typing
        assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (
            algo.clip_ratio_low, algo.clip_ratio_high, algo.clip_ratio_c,
        ), (case, run)  # fmt: skip
        assert (actor.use_kl_loss, actor.kl_loss_coef, actor.loss_agg_mode) == (
            algo.use_kl_loss, algo.kl_coef, algo.loss_agg_mode,
        ), (case, run)  # fmt: skip
        assert actor.optim.lr == params.train.lr and actor.strategy == "fsdp2"
        assert rollout.n == algo.n_on and rollout.response_length == params.train.max_response_length
        assert built["algorithm"].norm_adv_by_std_in_grpo == algo.norm_adv_by_std
        assert ("ref" in built) is algo.use_kl_loss and "critic" not in built  # GRPO-style: no critic
        assert algorithm_from_config(cfg.icpo) == algo
        if not gpu:
            assert rollout.dtype == "float32" and actor.fsdp_config.use_torch_compile is False


def test_a_key_verl_rejects_fails_here(project):
    """What the test above guards against: an actor key verl 0.9.1 does not have (through
    ``train.verl.extra_overrides`` here) composes with hydra's ``+`` but is refused by verl's config class."""
    params = _params(
        "paper_qwen3_1_7b",
        {"train": {"verl": {"extra_overrides": ["+actor_rollout_ref.actor.clip_grad=1.0"]}}},
    )
    cfg = _compose(params, "icpo", project, gpu=True, flash_attn=True)
    with pytest.raises(Exception, match="unexpected keyword argument 'clip_grad'"):
        _build_sections(cfg)
