"""params.yaml -> verl command: composes for every run and profile; paper profiles equal the released scripts."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from verl_fixtures import fake_verl_step

from icpo_core.config import load_params, parse_params
from icpo_core.engines.verl import job
from icpo_core.engines.verl import overrides as ov

ROOT = Path(__file__).resolve().parents[3]
RUNS = [
    "grpo",
    "icpo",
    "icpo_rs",
    "icpo_no_errs",
    "icpo_released",
    "grpo_released",
    "luffy",
    "grpo_random_reward",
    "grpo_format_reward",
]
PROFILES = ["embedded", "paper_qwen3_1_7b", "paper_qwen3_8b"]

# The released Qwen3 scripts' values (docs/method.md, "Paper-scale settings").
RELEASED = {
    "data.train_batch_size": 128,
    "data.max_prompt_length": 4096,
    "data.max_response_length": 8192,
    "data.filter_overlong_prompts": True,
    "data.truncation": "error",
    "data.shuffle": True,
    "actor_rollout_ref.actor.optim.lr": 1e-6,
    "actor_rollout_ref.actor.optim.weight_decay": 0.01,
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": 0.0,
    "actor_rollout_ref.actor.optim.lr_scheduler_type": "constant",
    "actor_rollout_ref.actor.use_kl_loss": True,
    "actor_rollout_ref.actor.kl_loss_coef": 0.001,
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
    "actor_rollout_ref.actor.optim.clip_grad": 1.0,
    "actor_rollout_ref.actor.clip_ratio_low": 0.2,
    "actor_rollout_ref.actor.clip_ratio_high": 0.2,
    "actor_rollout_ref.actor.clip_ratio_c": 3.0,
    "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
    "actor_rollout_ref.actor.ppo_epochs": 1,
    "actor_rollout_ref.actor.use_dynamic_bsz": False,
    "actor_rollout_ref.actor.fsdp_config.param_offload": False,
    "actor_rollout_ref.ref.fsdp_config.param_offload": True,
    "actor_rollout_ref.model.use_remove_padding": True,
    "actor_rollout_ref.model.enable_gradient_checkpointing": True,
    "actor_rollout_ref.rollout.name": "vllm",
    "actor_rollout_ref.rollout.n": 8,
    "actor_rollout_ref.rollout.temperature": 1.0,
    "actor_rollout_ref.rollout.top_p": 1.0,
    "actor_rollout_ref.rollout.top_k": -1,
    "actor_rollout_ref.rollout.gpu_memory_utilization": 0.8,
    "actor_rollout_ref.rollout.enforce_eager": True,
    "actor_rollout_ref.rollout.val_kwargs.n": 2,
    "actor_rollout_ref.rollout.val_kwargs.do_sample": True,
    "actor_rollout_ref.rollout.val_kwargs.temperature": 0.6,
    "actor_rollout_ref.rollout.val_kwargs.top_p": 0.7,
    "actor_rollout_ref.rollout.val_kwargs.top_k": 50,
    "algorithm.use_kl_in_reward": False,
    "algorithm.norm_adv_by_std_in_grpo": True,
    "trainer.nnodes": 1,
    "trainer.n_gpus_per_node": 8,
    "trainer.total_training_steps": 400,
    "trainer.save_freq": 50,
    "trainer.critic_warmup": 0,
    "trainer.test_freq": 10,
    "trainer.val_before_train": True,
    "data.val_max_samples": -1,
}
RELEASED_VAL = ["math500", "amc23", "aime24"]  # validated on every test_freq steps (prepare_val writes them)
PER_MODEL = {
    "paper_qwen3_1_7b": {
        "actor_rollout_ref.actor.ppo_mini_batch_size": 64,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 2,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 2,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": 2,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": False,
    },
    "paper_qwen3_8b": {
        "actor_rollout_ref.actor.ppo_mini_batch_size": 32,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 1,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 1,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": 1,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": 8,
        # not released (both on the GPU): AdamW's state beside vLLM's 0.8 of every 80 GB GPU leaves ~2 GiB; offloaded
        # between optimizer steps (the same numbers) it leaves ~10 GiB (params.yaml, docs/method.md)
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": True,
    },
}


def _params(profile: str, **train_verl):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = profile
    if train_verl:  # into the profile, which deep-merges over the base sections
        target = raw["profiles"][profile] if profile != "embedded" else raw
        target.setdefault("train", {}).setdefault("verl", {}).update(train_verl)
    return parse_params(raw)


def _on_gpu_node(params) -> bool:
    """``overrides.on_cpu`` as a GPU node answers it: only an explicit ``train.device: cpu`` is a CPU run."""
    return params.train.device == "cpu"


@pytest.fixture(autouse=True)
def gpu_node(monkeypatch):
    """Every test here resolves the overrides as on a GPU node with flash-attn (this machine may have neither)."""
    monkeypatch.setattr(ov, "on_cpu", _on_gpu_node)
    monkeypatch.setattr(ov, "flash_attn_available", lambda: True)


def _no_hydra(overrides: list[str]) -> list[str]:
    """The overrides the compose API takes (``hydra.*`` keys only work on the command line)."""
    return [o for o in overrides if not o.startswith("hydra.")]


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    """Every (profile, run) composed in-process with hydra's compose API (hydra.* keys go via --cfg below)."""
    from hydra import compose, initialize_config_dir

    cfg_dir = str(Path(ov.__file__).parent / "config")
    root = tmp_path_factory.mktemp("proj")
    out = {}
    # what a GPU node with flash-attn resolves (this machine may have neither: cpu_overrides / SDPA_FALLBACK)
    with (
        pytest.MonkeyPatch.context() as mp,
        initialize_config_dir(config_dir=cfg_dir, version_base=None),
    ):
        mp.setattr(ov, "on_cpu", _on_gpu_node)
        mp.setattr(ov, "flash_attn_available", lambda: True)
        for profile in PROFILES:
            params = _params(profile)
            for run in RUNS:
                overrides = [o for o in ov.override_list(params, run, root) if not o.startswith("hydra.")]
                out[profile, run] = compose("icpo_trainer", overrides=overrides)
    return out, root


@pytest.mark.parametrize("profile", ["paper_qwen3_1_7b", "paper_qwen3_8b"])
def test_paper_profiles_equal_released_scripts(composed, profile):
    cfgs, root = composed
    for run in RUNS:
        cfg = cfgs[profile, run]
        for key, want in {**RELEASED, **PER_MODEL[profile]}.items():
            if run == "luffy" and key == "algorithm.norm_adv_by_std_in_grpo":
                want = False  # LUFFY's own setting (runs.luffy), not the ICPO scripts'
            assert _get(cfg, key) == want, (profile, run, key)
        assert cfg.data.val_files == [str(root / "data" / "val" / f"{b}.parquet") for b in RELEASED_VAL]
    # the only deliberate differences: IEF prompt room, entropy bonus only on the released run
    grpo, icpo = cfgs[profile, "grpo"], cfgs[profile, "icpo"]
    assert grpo.actor_rollout_ref.rollout.prompt_length == 4096
    assert grpo.actor_rollout_ref.rollout.max_num_batched_tokens == 12288  # released value
    assert icpo.actor_rollout_ref.rollout.prompt_length == 8192
    luffy = cfgs[profile, "luffy"]
    assert luffy.actor_rollout_ref.rollout.prompt_length == 4096  # traces are responses, not prompt room
    assert luffy.icpo.off_policy == "expert_trace" and luffy.icpo.clip_on_policy is False
    assert cfgs[profile, "grpo_random_reward"].icpo.reward == "random"
    entropy = {r: cfgs[profile, r].actor_rollout_ref.actor.entropy_coeff for r in RUNS}
    assert entropy == {r: 0.001 if r == "icpo_released" else 0 for r in RUNS}
    # the released-code comparison: GRPO under the released loss averaging too, and no entropy bonus
    released = cfgs[profile, "grpo_released"]
    assert released.icpo.released_loss_agg is True and released.icpo.n_off == 0
    assert released.algorithm.adv_estimator == "grpo"
    # LUFFY's released reward on the paper profiles: both think tags, graded after </think> (both engines)
    kwargs = {r: cfgs[profile, r].reward.custom_reward_function.reward_kwargs.think_format for r in RUNS}
    assert kwargs == {r: "luffy" if r == "luffy" else "none" for r in RUNS}
    assert luffy.icpo.think_format == "luffy"


def test_the_run_seed_reaches_vllm_and_determinism_is_a_switch(composed, tmp_path):
    """The study seed seeds vLLM's sampling and the FSDP engines (verl's default 42 would give every seed one
    rollout stream); train.deterministic reaches verl's full_determinism on the actor, reference and rollout."""
    from hydra import compose, initialize_config_dir

    cfgs, _ = composed
    for (profile, run), cfg in cfgs.items():
        ar = cfg.actor_rollout_ref
        assert ar.rollout.seed == ar.actor.fsdp_config.seed == ar.ref.fsdp_config.seed == 0, (profile, run)
        assert not (ar.rollout.full_determinism or ar.actor.fsdp_config.full_determinism), (profile, run)
    params = _params("paper_qwen3_8b").with_seed(3)
    params = params.model_copy(update={"train": params.train.model_copy(update={"deterministic": True})})
    overrides = [o for o in ov.override_list(params, "icpo", tmp_path) if not o.startswith("hydra.")]
    with initialize_config_dir(config_dir=str(Path(ov.__file__).parent / "config"), version_base=None):
        cfg = compose("icpo_trainer", overrides=overrides)
    ar = cfg.actor_rollout_ref
    assert ar.rollout.seed == ar.actor.fsdp_config.seed == ar.ref.fsdp_config.seed == 3
    assert ar.rollout.full_determinism and ar.actor.fsdp_config.full_determinism
    assert ar.ref.fsdp_config.full_determinism


def test_every_run_composes_with_its_method(composed):
    cfgs, root = composed
    for (profile, run), cfg in cfgs.items():
        params = _params(profile)
        algo = params.run_algorithm(run)
        assert cfg.algorithm.adv_estimator == ("grpo" if algo.n_off == 0 else "icpo")
        assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == ("vanilla" if algo.n_off == 0 else "icpo")
        assert cfg.actor_rollout_ref.rollout.agent.agent_loop_manager_class == ov.MANAGER_FQN
        assert cfg.trainer.use_v1 is False
        assert cfg.trainer.logger == ["console", "mlflow", "file"]
        assert cfg.trainer.experiment_name == run
        assert cfg.trainer.default_local_dir == str(root / "runs" / run / "checkpoints")
        assert cfg.trainer.max_actor_ckpt_to_keep == params.train.max_ckpt_to_keep
        # LUFFY reads the training parquet without target-less rows, written at launch into the run's folder
        train = root / ("runs/luffy/expert_trace_train.parquet" if run == "luffy" else "data/train.parquet")
        assert cfg.data.train_files == [str(train)]
        val = [str(root / "data" / "val" / f"{b}.parquet") for b in params.train.verl.val_benchmarks]
        assert val and cfg.data.val_files == val  # every profile validates (embedded: a synthetic level)
        assert cfg.trainer.test_freq == params.train.verl.test_freq and cfg.trainer.val_before_train is True
        assert cfg.actor_rollout_ref.model.path == str(root / "models" / "base")
        assert cfg.actor_rollout_ref.rollout.n == algo.n_on
        for key, value in algo.model_dump().items():
            assert cfg.icpo[key] == value, (profile, run, key)
        assert cfg.icpo.prompt_suffix == params.train_prompt_suffix
        assert cfg.icpo.demo_path == str(root / "data" / "demos.parquet")
        assert cfg.reward.custom_reward_function.path == ov.REWARD_PATH


def test_the_yaml_icpo_block_states_no_algorithm_default():
    """config/icpo_trainer.yaml's ``icpo`` block is every AlgorithmParams field plus the launch keys, each
    mandatory (``???``): the typed model is the only place a default lives (a new field needs its ``???`` line)."""
    from icpo_core.config import AlgorithmParams
    from icpo_core.engines.verl.icpo_block import ICPO_LAUNCH_KEYS

    cfg = yaml.safe_load((Path(ov.__file__).parent / "config" / "icpo_trainer.yaml").read_text())
    assert list(cfg["icpo"]) == [*AlgorithmParams.model_fields, *ICPO_LAUNCH_KEYS]
    assert set(cfg["icpo"].values()) == {"???"}
    assert cfg["actor_rollout_ref"]["rollout"]["n"] == "???"  # icpo.n_on, set by the launch


def test_every_algorithm_field_is_set_from_params(composed):
    """The mapping sets every AlgorithmParams field of every run and profile (none is left to the yaml), and
    the verl side reads the composed block back as the same typed params."""
    from icpo_core.config import AlgorithmParams
    from icpo_core.engines.verl.icpo_block import algorithm_from_config

    cfgs, root = composed
    for (profile, run), cfg in cfgs.items():
        algo = _params(profile).run_algorithm(run)
        keys = {o.split("=", 1)[0] for o in ov.override_list(_params(profile), run, root)}
        for field in AlgorithmParams.model_fields:
            assert f"icpo.{field}" in keys, (profile, run, field)
            assert cfg.icpo[field] == getattr(algo, field), (profile, run, field)
        assert algorithm_from_config(cfg.icpo) == algo, (profile, run)


def test_an_unset_icpo_key_is_an_error_not_a_default(tmp_path):
    """Composed without the launch's icpo keys, reading the block fails naming the key (no silent default)."""
    from hydra import compose, initialize_config_dir
    from omegaconf.errors import MissingMandatoryValue

    from icpo_core.engines.verl.icpo_block import algorithm_from_config

    overrides = [
        o
        for o in ov.override_list(_params("embedded"), "icpo", tmp_path)
        if not o.startswith(("hydra.", "icpo.gamma="))
    ]
    with initialize_config_dir(config_dir=str(Path(ov.__file__).parent / "config"), version_base=None):
        cfg = compose("icpo_trainer", overrides=overrides)
    with pytest.raises(MissingMandatoryValue, match="gamma"):
        algorithm_from_config(cfg.icpo)


def test_luffy_actor_loss_drops_the_on_policy_clip(composed):
    """The loss RayICPOTrainer installs on LUFFY's actor workers has no PPO clip on the rollouts."""
    from icpo_core.engines.verl.trainer import make_actor_loss

    cfgs, _ = composed
    assert make_actor_loss(cfgs["embedded", "luffy"]).keywords["clip_on_policy"] is False
    assert make_actor_loss(cfgs["embedded", "icpo"]).keywords["clip_on_policy"] is True


def test_validation_multinode_and_extra_overrides(tmp_path):
    from hydra import compose, initialize_config_dir

    params = _params(
        "paper_qwen3_1_7b",
        nnodes=4,
        val_files=["data/val/extra.parquet"],
        extra_overrides=["trainer.save_freq=25"],
    )
    overrides = [o for o in ov.override_list(params, "icpo", tmp_path) if not o.startswith("hydra.")]
    assert overrides[-1] == "trainer.save_freq=25"
    with initialize_config_dir(config_dir=str(Path(ov.__file__).parent / "config"), version_base=None):
        cfg = compose("icpo_trainer", overrides=overrides)
    assert cfg.trainer.nnodes == 4 and cfg.ray_kwargs.ray_init.address == "auto"
    assert cfg.trainer.test_freq == 10 and cfg.trainer.val_before_train is True
    # the prepare_val benchmarks first, then the extra files
    assert cfg.data.val_files == [str(tmp_path / f"data/val/{b}.parquet") for b in [*RELEASED_VAL, "extra"]]
    assert cfg.data.val_max_samples == -1
    assert cfg.trainer.save_freq == 25


def test_multinode_passes_tracking_env_to_every_ray_actor(tmp_path):
    """nnodes > 1: the TaskRunner gets the raylet's env, so the MLflow run and step log go via runtime_env,
    and what goes there is stable across a resume (verl logs the config as MLflow params)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from verl.utils.tracking import _compute_mlflow_params_from_objects

    def launch_env(stamp: str) -> dict[str, str]:
        return {
            "MLFLOW_RUN_ID": "0123abcd",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow/mlflow.db",
            "VERL_FILE_LOGGER_PATH": str(tmp_path / f"runs/icpo/verl_metrics/{stamp}.jsonl"),
        }

    multi, one = _params("paper_qwen3_1_7b", nnodes=2), _params("paper_qwen3_1_7b")
    with initialize_config_dir(config_dir=str(Path(ov.__file__).parent / "config"), version_base=None):
        first = compose(
            "icpo_trainer", overrides=_no_hydra(ov.override_list(multi, "icpo", tmp_path, launch_env("a")))
        )
        resumed = compose(
            "icpo_trainer", overrides=_no_hydra(ov.override_list(multi, "icpo", tmp_path, launch_env("b")))
        )
        single = compose(
            "icpo_trainer", overrides=_no_hydra(ov.override_list(one, "icpo", tmp_path, launch_env("a")))
        )
    assert OmegaConf.to_container(first.ray_kwargs.ray_init.runtime_env.env_vars) == {
        "ICPO_VERL_METRICS_DIR": str(tmp_path / "runs/icpo/verl_metrics"),
        "MLFLOW_RUN_ID": "0123abcd",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow/mlflow.db",
    }
    assert first.ray_kwargs.ray_init.address == "auto"
    params_of = [
        _compute_mlflow_params_from_objects(OmegaConf.to_container(c, resolve=True)) for c in (first, resumed)
    ]
    assert params_of[0] == params_of[1]  # a resume re-logs the same params: MLflow keeps the run
    # one node: ray.init starts the cluster from the launcher, whose environment every actor inherits
    assert "env_vars" not in single.ray_kwargs.ray_init.runtime_env


def _with_loggers(profile: str, loggers: list[str], **train_verl):
    params = _params(profile, **train_verl)
    return params.model_copy(update={"tracking": params.tracking.model_copy(update={"loggers": loggers})})


def test_wandb_joins_verls_loggers_and_the_step_log_stays(tmp_path, monkeypatch):
    """``tracking.loggers: [mlflow, wandb]``: verl's own wandb logger beside mlflow, ``file`` (the step log
    ``metrics/steps_<run>.jsonl`` is exported from) still there; the environment gives verl's ``wandb.init`` the
    study as group, the method as job type, the tags, the run's folder and a run id kept for resumes."""
    from hydra import compose, initialize_config_dir

    from icpo_core import tracking

    monkeypatch.setenv("WANDB_MODE", "offline")
    plain = _params("embedded")
    both = _with_loggers("embedded", ["mlflow", "wandb"])
    assert ov.verl_loggers(plain) == ["console", "mlflow", "file"]
    assert ov.verl_loggers(both) == ["console", "mlflow", "wandb", "file"]
    with initialize_config_dir(config_dir=str(Path(ov.__file__).parent / "config"), version_base=None):
        cfg = compose("icpo_trainer", overrides=_no_hydra(ov.override_list(both, "icpo", tmp_path)))
    assert list(cfg.trainer.logger) == ["console", "mlflow", "wandb", "file"]
    assert "file" in cfg.trainer.logger and cfg.trainer.project_name == both.tracking.experiment

    env = job.logger_env(both, "icpo", tmp_path, "icpo_s0")
    assert env["WANDB_RUN_GROUP"] == tracking.study_id(both)
    assert env["WANDB_JOB_TYPE"] == "icpo"
    assert "icpo.method=icpo" in env["WANDB_TAGS"].split(",") and "icpo.instance=icpo_s0" in env["WANDB_TAGS"]
    assert env["WANDB_DIR"] == str(tmp_path / "runs" / "icpo_s0") and env["WANDB_MODE"] == "offline"
    assert env["WANDB_RESUME"] == "allow"
    assert job.logger_env(both, "icpo", tmp_path, "icpo_s0")["WANDB_RUN_ID"] == env["WANDB_RUN_ID"]  # kept
    assert job.logger_env(plain, "icpo", tmp_path, "icpo_s0") == {}
    # multi-node: the same through Ray's runtime env, without the git commit (verl logs that env as params)
    multi = _with_loggers("paper_qwen3_1_7b", ["mlflow", "wandb"], nnodes=2)
    ray = ov.ray_env_vars({**env, "MLFLOW_RUN_ID": "x"})
    assert {k for k in ray if k.startswith("WANDB_")} == set(tracking.WANDB_ENV_KEYS)
    assert not any(t.startswith("git_commit=") for t in ray["WANDB_TAGS"].split(","))
    assert ov.verl_loggers(multi)[-1] == "file"


def test_verl_without_a_wandb_key_logs_offline(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    env = job.logger_env(_with_loggers("embedded", ["mlflow", "wandb"]), "grpo", tmp_path, "grpo_s0")
    assert env["WANDB_MODE"] == "offline"
    assert "wandb sync" in capfd.readouterr().err


def test_task_runner_names_its_step_log_in_the_forwarded_folder(tmp_path):
    from icpo_core.engines.verl.metrics import task_runner_log_path

    env = {"ICPO_VERL_METRICS_DIR": str(tmp_path / "m")}
    path = Path(task_runner_log_path(env))
    assert (
        path.parent == tmp_path / "m"
        and path.suffix == ".jsonl"
        and env["VERL_FILE_LOGGER_PATH"] == str(path)
    )
    kept = {
        "ICPO_VERL_METRICS_DIR": str(tmp_path / "m"),
        "VERL_FILE_LOGGER_PATH": str(tmp_path / "m" / "x.jsonl"),
    }
    assert task_runner_log_path(kept) == str(tmp_path / "m" / "x.jsonl")
    assert task_runner_log_path({}) is None


def test_grad_clip_reaches_the_optimizer_config(tmp_path):
    """train.grad_clip -> actor.optim.clip_grad, the value verl 0.9.1's FSDP engine clips with."""
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "paper_qwen3_1_7b"
    raw["train"]["grad_clip"] = 0.25
    params = parse_params(raw)
    assert params.train.grad_clip == 0.25
    with initialize_config_dir(config_dir=str(Path(ov.__file__).parent / "config"), version_base=None):
        cfg = compose("icpo_trainer", overrides=_no_hydra(ov.override_list(params, "icpo", tmp_path)))
    assert cfg.actor_rollout_ref.actor.optim.clip_grad == 0.25
    assert omega_conf_to_dataclass(cfg.actor_rollout_ref.actor.optim).clip_grad == 0.25


def test_no_val_benchmarks_keeps_the_never_used_stand_in_and_val_sampling_is_a_knob(tmp_path):
    o = ov.verl_overrides(_params("embedded", val_benchmarks=[], val_n=4, val_top_k=-1), "icpo", tmp_path)
    assert o["data.val_files"] == [str(tmp_path / "data/train.parquet")] and o["data.val_max_samples"] == 8
    assert (o["trainer.test_freq"], o["trainer.val_before_train"]) == (-1, False)
    assert o["actor_rollout_ref.rollout.val_kwargs.n"] == 4
    assert o["actor_rollout_ref.rollout.val_kwargs.top_k"] == -1


def test_unsupported_eps_is_refused():
    from icpo_core.config import ParamsError

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["runs"]["icpo"] = {"n_off": 1, "adv_eps": 1e-4}
    with pytest.raises(ParamsError, match="adv_eps"):
        ov.override_list(parse_params(raw), "icpo")


@pytest.mark.slow
def test_hydra_string_quoting_round_trips(tmp_path):
    """Through the real launcher (`--cfg job`, one subprocess): odd strings survive hydra's override parser."""
    nasty = ' Let\'s think \\boxed{} "q" ${oc.env:HOME} a\\'
    params = _params("paper_qwen3_8b")
    cmd = job.build_command(params, "icpo_rs", tmp_path)
    cmd = [c for c in cmd if not c.startswith("icpo.prompt_suffix=")]
    cmd += [f"icpo.prompt_suffix={ov._fmt(nasty)}", "--cfg", "job", "--resolve"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = yaml.safe_load(r.stdout)
    assert cfg["icpo"]["prompt_suffix"] == nasty
    assert cfg["icpo"]["reward_shaping"] is True
    assert cfg["actor_rollout_ref"]["rollout"]["tensor_model_parallel_size"] == 8
    assert not (tmp_path / "outputs").exists()  # --cfg job writes nothing


def test_cli_prints_shell_quoted_command(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}
    r = subprocess.run(
        [sys.executable, "-m", "icpo_core.cli", "--params", str(ROOT / "params.yaml"), "verl-cmd", "--run", "icpo"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    words = shlex.split(r.stdout)
    assert words[0] == "MLFLOW_TRACKING_URI=http://mlflow.example:5000"
    assert words[1].startswith("VERL_FILE_LOGGER_PATH=") and "/runs/icpo/verl_metrics/" in words[1]
    # on a machine without CUDA the CPU platform's env (VERL_PLATFORM=cpu, ...) follows
    i = words.index("python")
    assert all("=" in w for w in words[2:i])
    assert words[i : i + 3] == ["python", "-m", job.LAUNCHER_MODULE]
    algo = load_params(ROOT / "params.yaml").run_algorithm("icpo")
    assert f"icpo.n_off={algo.n_off}" in words and f"actor_rollout_ref.rollout.n={algo.n_on}" in words
    assert "note:" not in r.stderr
    # LUFFY's command reads the training file `icpo train` writes at launch, and says so
    r = subprocess.run(
        [sys.executable, "-m", "icpo_core.cli", "--params", str(ROOT / "params.yaml"), "verl-cmd", "--run", "luffy"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    files = [w for w in shlex.split(r.stdout) if w.startswith("data.train_files=")]
    assert files == [f'data.train_files=["{ROOT / "runs/luffy/expert_trace_train.parquet"}"]']
    assert "note: the command reads runs/luffy/expert_trace_train.parquet" in r.stderr
    assert "icpo train --run luffy" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "icpo_core.cli", "--params", str(ROOT / "params.yaml"), "verl-cmd", "--run", "nope"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "unknown run" in r.stderr


def test_launch_streams_passes_env_and_exports_steps(tmp_path, monkeypatch, capfd):
    """launch() runs the command with the MLflow env and turns verl's step log into metrics/steps_<run>.jsonl."""
    params = _params("embedded")
    script = (
        "import json, os; print('uri', os.environ['MLFLOW_TRACKING_URI']); print('run', os.environ.get('MLFLOW_RUN_ID'));"
        "f = open(os.environ['VERL_FILE_LOGGER_PATH'], 'w');"
        "[f.write(json.dumps({'step': s, 'data': {'actor/kl_loss': 0.1 * s, 'reward/on_policy': 0.5, 'icpo/accept_rate': 1.0,"
        " 'timing_s/step': 2.0, 'response_length/mean': 30.0, 'training/global_step': s}}) + chr(10)) for s in (1, 2)]"
    )
    seen_env: list[dict] = []

    def fake_build(p, run, root=".", env=None, instance=None):
        seen_env.append(dict(env or {}))
        return [sys.executable, "-c", script]

    monkeypatch.setattr(job, "build_command", fake_build)
    monkeypatch.setattr(job, "run_preflight", lambda *a: None)  # tested in test_verl_preflight.py
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc123")
    assert job.launch(params, "icpo", tmp_path) == 0
    # the command is built with the launch env (nnodes > 1 forwards it through ray's runtime_env)
    assert seen_env[0]["MLFLOW_RUN_ID"] == "abc123" and "VERL_FILE_LOGGER_PATH" in seen_env[0]
    out = capfd.readouterr().out
    assert f"uri sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db" in out and "run abc123" in out
    rows = [json.loads(line) for line in (tmp_path / "metrics" / "steps_icpo.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1] == {
        "step": 2, "actor/kl": 0.2, "reward/on_policy": 0.5, "icpo/accept_rate": 1.0,
        "perf/step_time_s": 2.0, "response/length_mean": 30.0,
    }  # fmt: skip
    monkeypatch.setattr(
        job,
        "build_command",
        lambda p, run, root=".", env=None, instance=None: [sys.executable, "-c", "raise SystemExit(3)"],
    )
    assert job.launch(params, "icpo", tmp_path) == 3


@pytest.mark.slow
def test_launch_opens_tagged_mlflow_run_that_verl_attaches_to(tmp_path, monkeypatch, capfd):
    from mlflow.tracking import MlflowClient

    from icpo_core import tracking

    params = _params("embedded")
    script = (
        "import json, os; print('attach', os.environ['MLFLOW_RUN_ID']);"
        "open(os.environ['VERL_FILE_LOGGER_PATH'], 'w').write(json.dumps({'step': 1, 'data': {}}) + chr(10))"
    )
    monkeypatch.setattr(
        job, "build_command", lambda p, run, root=".", env=None, instance=None: [sys.executable, "-c", script]
    )
    monkeypatch.setattr(job, "run_preflight", lambda *a: None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    assert job.launch(params, "icpo_rs", tmp_path) == 0
    uri = tracking.tracking_uri(params, tmp_path)
    run_id = tracking.read_run_id(tmp_path / tracking.run_id_path("icpo_rs"), uri)
    assert f"attach {run_id}" in capfd.readouterr().out
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.run_name == "icpo_rs" and run.info.status == "FINISHED"
    assert run.data.tags["icpo.run"] == "icpo_rs" and run.data.tags["icpo.method"] == "icpo"
    assert run.data.params["algorithm.reward_shaping"] == "True"
    # a relaunch (resume) attaches to the same run
    assert job.launch(params, "icpo_rs", tmp_path) == 0
    assert f"attach {run_id}" in capfd.readouterr().out


@pytest.mark.parametrize("targets", [None, ["all-linear"]])
def test_lora_reaches_verls_model_config(tmp_path, targets):
    """train.lora -> actor_rollout_ref.model.lora_rank / lora_alpha / target_modules, accepted by verl's own
    HFModelConfig (built from a real tiny model folder), and verl then takes the reference from the actor."""
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import HFModelConfig

    from icpo_core.models.tiny import write_tiny_model

    write_tiny_model(tmp_path / "models" / "base")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "paper_qwen3_1_7b"
    raw["train"]["lora"] = {"enabled": True, "rank": 32, "alpha": 64}
    if targets:
        raw["train"]["lora"]["target_modules"] = targets
    params = parse_params(raw)
    off = ov.verl_overrides(_params("paper_qwen3_1_7b"), "icpo", tmp_path)
    assert not [k for k in off if "lora" in k or "target_modules" in k]  # off: verl's defaults (rank 0)
    with initialize_config_dir(config_dir=str(Path(ov.__file__).parent / "config"), version_base=None):
        cfg = compose("icpo_trainer", overrides=_no_hydra(ov.override_list(params, "icpo", tmp_path)))
    model = cfg.actor_rollout_ref.model
    want_targets = "all-linear" if targets else list(params.train.lora.target_modules)
    assert (model.lora_rank, model.lora_alpha) == (32, 64)
    got = model.target_modules if isinstance(model.target_modules, str) else list(model.target_modules)
    assert got == want_targets
    hf = omega_conf_to_dataclass(model)
    assert isinstance(hf, HFModelConfig)
    assert (hf.lora_rank, hf.lora_alpha) == (32, 64)
    assert (
        hf.target_modules if isinstance(hf.target_modules, str) else list(hf.target_modules)
    ) == want_targets
    assert model.get("lora_rank", 0) > 0  # verl's ref_in_actor rule (RayPPOTrainer): no separate ref weights


def test_lora_dropout_is_refused_with_verl():
    """verl's FSDP LoraConfig has no dropout: the launch refuses a value it would ignore (the local engine
    applies it, so params.yaml itself accepts it)."""
    from icpo_core.config import ParamsError

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "paper_qwen3_1_7b"
    raw["train"]["lora"] = {"enabled": True, "dropout": 0.05}
    params = parse_params(raw)
    assert params.train.lora.dropout == 0.05
    with pytest.raises(
        ParamsError, match=r"train\.lora\.dropout: must be 0\.0 with train\.engine verl \(got 0\.05\)"
    ):
        ov.override_list(params, "icpo")


def test_cpu_and_no_flash_attn_settings(monkeypatch):
    """train.device cpu: the CPU keys (FSDP2, SDPA, no sleep mode, small weight bucket, one rank) and the CPU
    platform env; a GPU without flash-attn: SDPA and unpadded sequences; with it: the released settings."""
    params = _params("paper_qwen3_1_7b")
    cuda = params.model_copy(update={"train": params.train.model_copy(update={"device": "cuda"})})
    monkeypatch.setattr(ov, "flash_attn_available", lambda: True)
    gpu = ov.verl_overrides(cuda, "icpo")
    assert gpu["actor_rollout_ref.model.use_remove_padding"] is True
    assert gpu["actor_rollout_ref.actor.strategy"] == "fsdp2"
    assert "trainer.device" not in gpu and "+actor_rollout_ref.rollout.enable_sleep_mode" not in gpu
    monkeypatch.setattr(ov, "flash_attn_available", lambda: False)
    no_fa = ov.verl_overrides(cuda, "icpo")
    assert no_fa["+actor_rollout_ref.model.override_config.attn_implementation"] == "sdpa"
    assert no_fa["actor_rollout_ref.model.use_remove_padding"] is False
    cpu = params.model_copy(update={"train": params.train.model_copy(update={"device": "cpu"})})
    c = ov.verl_overrides(cpu, "icpo")
    assert c["trainer.device"] == "cpu" and c["trainer.n_gpus_per_node"] == 1
    assert c["+actor_rollout_ref.rollout.enable_sleep_mode"] is False
    assert c["actor_rollout_ref.rollout.free_cache_engine"] is False
    assert c["actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes"] == 256
    assert job.launch_env(cpu, "icpo")["VERL_PLATFORM"] == "cpu"
    assert "VERL_PLATFORM" not in job.launch_env(cuda, "icpo")


def test_a_checkpoint_at_train_steps_launches_nothing_and_rebuilds_the_step_log(tmp_path, monkeypatch, capfd):
    """A kill after verl's last checkpoint, before DVC recorded the stage: the rerun must not launch verl (its
    ``fit`` would resume at step N + 1 and train a step past train.steps). The step log is rebuilt from the
    launch logs (a line cut by the kill skipped) and the run ends with exit code 0."""
    from icpo_core import paths
    from icpo_core.engines.verl.metrics import metrics_dir
    from icpo_core.engines.verl.resume import check_or_record

    params = _params("embedded")
    steps = params.train.steps
    ckpts = tmp_path / paths.checkpoints_dir("icpo")
    check_or_record(params, "icpo", ckpts)  # the fresh start's record
    fake_verl_step(ckpts, steps)
    (ckpts / "global_step_1").mkdir()  # what verl's pruning leaves of an old step
    (ckpts / "global_step_1" / "data.pt").write_bytes(b"x")
    log_dir = tmp_path / metrics_dir("icpo")
    log_dir.mkdir(parents=True)
    lines = [json.dumps({"step": s, "data": {"timing_s/step": 1.0 * s}}) for s in range(1, steps + 1)]
    (log_dir / "launch-1.jsonl").write_text("\n".join(lines) + '\n{"step": ' + str(steps + 1) + ', "da')

    def no_launch(*a, **k):
        raise AssertionError("verl launched")

    monkeypatch.setattr(job, "build_command", no_launch)
    monkeypatch.setattr(job, "run_preflight", no_launch)
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc123")  # no tracker of our own here
    assert job.launch(params, "icpo", tmp_path) == 0
    out, err = capfd.readouterr()
    assert f"checkpoint is at step {steps} of train.steps {steps}: nothing to train, verl not launched" in out
    assert "warning" not in err
    rows = [json.loads(x) for x in (tmp_path / paths.train_metrics_jsonl("icpo")).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert rows[-1]["perf/step_time_s"] == float(steps)
    assert not (ckpts / "global_step_1").exists() and (ckpts / f"global_step_{steps}").is_dir()


def test_a_checkpointed_step_no_launch_logged_is_named_once(tmp_path, capfd):
    """verl checkpoints a step before it logs it: a kill between the two leaves a step in the weights and in no
    log. The next launch names the missing steps in one warning (and none when every step is logged)."""
    log_dir = tmp_path / "verl_metrics"
    log_dir.mkdir()
    (log_dir / "a.jsonl").write_text(json.dumps({"step": 1, "data": {}}) + "\n")
    assert job.warn_unlogged_steps(log_dir, 0, "icpo") == []
    assert job.warn_unlogged_steps(log_dir, 1, "icpo") == []
    assert capfd.readouterr().err == ""
    assert job.warn_unlogged_steps(log_dir, 3, "icpo") == [2, 3]
    err = capfd.readouterr().err
    assert (
        err.count("warning") == 1
        and "runs.icpo: step(s) [2, 3] are in the checkpoint but in no step log" in err
    )
