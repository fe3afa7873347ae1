"""params.yaml validation: every bad input fails through the CLI with exit 2 and a message naming the key path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from icpo_core.cli import main
from icpo_core.config import ParamsError, deep_merge, load_params, parse_params

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(REPO_PARAMS.read_text())


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project folder as the working directory (params paths are relative to it)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache.pkl").write_bytes(b"not read during validation")
    (tmp_path / "train.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n')
    return tmp_path


def _validate(project: Path, params: dict[str, Any] | str, capsys, out: bool = False) -> tuple[int, str]:
    """Run `icpo validate` on these params; (exit code, stderr) or (exit code, stdout) with ``out``."""
    text = params if isinstance(params, str) else yaml.safe_dump(params)
    (project / "params.yaml").write_text(text)
    rc = main(["--params", str(project / "params.yaml"), "validate"])
    captured = capsys.readouterr()
    return rc, (captured.out if out else captured.err)


BAD_CASES = [
    # (id, override merged into the repo's params.yaml, substrings the message must contain)
    ("wrong-type-int", {"train": {"steps": "ten"}}, ["train.steps"]),
    ("wrong-type-bool", {"algorithm": {"errs": "maybe"}}, ["algorithm.errs"]),
    ("wrong-type-section", {"data": {"train": 5}}, ["data.train"]),
    ("unknown-key-top", {"trainer": {"steps": 1}}, ["trainer", "unknown key"]),
    ("unknown-key-depth2", {"data": {"extra": 1}}, ["data.extra", "unknown key"]),
    ("unknown-key-depth3", {"data": {"train": {"pathh": "x"}}}, ["data.train.pathh", "unknown key"]),
    ("unknown-key-depth4", {"train": {"verl": {"nnodez": 2}}}, ["train.verl.nnodez", "unknown key"]),
    ("bad-literal-model-source", {"model": {"source": "gguf"}}, ["model.source", "smollm2_gguf"]),
    ("bad-literal-dtype", {"model": {"save_dtype": "int8"}}, ["model.save_dtype", "int8"]),
    (
        "bad-literal-train-source",
        {"data": {"train": {"source": "openr1"}}},
        ["data.train.source", "openr1_46k"],
    ),
    ("negative-lr", {"train": {"lr": -1e-6}}, ["train.lr", "greater than 0"]),
    ("zero-max-tokens", {"data": {"train": {"max_tokens": 0}}}, ["data.train.max_tokens"]),
    ("zero-num-proc", {"data": {"train": {"num_proc": 0}}}, ["data.train.num_proc"]),
    ("zero-max-rows", {"data": {"demos": {"max_rows": 0}}}, ["data.demos.max_rows"]),
    ("top-p-above-1", {"train": {"top_p": 1.5}}, ["train.top_p"]),
    ("n-off-above-n-on", {"algorithm": {"n_on": 4, "n_off": 5}}, ["algorithm", "n_off (5) > n_on (4)"]),
    ("mini-batch-above-batch", {"train": {"ppo_mini_batch_prompts": 8}}, ["train", "ppo_mini_batch_prompts"]),
    ("bad-run-override-value", {"runs": {"icpo": {"n_off": 9}}}, ["runs.icpo", "n_off (9) > n_on (8)"]),
    ("bad-run-override-key", {"runs": {"icpo": {"n_offf": 1}}}, ["runs.icpo.n_offf", "unknown key"]),
    ("bad-run-override-type", {"runs": {"grpo": {"gamma": "big"}}}, ["runs.grpo.gamma"]),
    ("reserved-run-name", {"runs": {"base": {"n_off": 0}}}, ["runs.base: 'base' is reserved"]),
    ("report-unknown-run", {"report": {"runs": ["base", "ppo"]}}, ["report.runs[1]", "(got 'ppo')"]),
    (
        "unknown-profile",
        {"profile": "paper_qwen3_70b"},
        ["profile: unknown profile", "(got 'paper_qwen3_70b')"],
    ),
    ("synthetic-level-out-of-range", {"data": {"synthetic": {"levels": [0, 4]}}}, ["data.synthetic.levels"]),
    (
        "synthetic-no-levels",
        {"data": {"synthetic": {"levels": []}}},
        ["data.synthetic.levels", "at least one"],
    ),
    (
        "synthetic-dup-levels",
        {"data": {"synthetic": {"levels": [1, 1]}}},
        ["data.synthetic.levels", "unique"],
    ),
    ("local-train-without-path", {"data": {"train": {"source": "local"}}}, ["data.train.path", "needs"]),
    (
        "local-train-missing-file",
        {"data": {"train": {"source": "local", "path": "nope/train.parquet"}}},
        ["data.train.path", "nope/train.parquet", "does not exist"],
    ),
    (
        "hub-train-missing-local-copy",
        {"data": {"train": {"source": "openr1_220k", "path": "copies/openr1"}}},
        ["data.train.path", "does not exist"],
    ),
    (
        "path-with-synthetic-source",
        {"data": {"train": {"path": "train.jsonl"}}},
        ["data.train.path", "synthetic"],
    ),
    (
        "local-demos-missing-file",
        {"data": {"demos": {"source": "local", "path": "demos.jsonl"}}},
        ["data.demos.path", "demos.jsonl", "does not exist"],
    ),
    ("pkl-without-path", {"data": {"demos": {"source": "pkl", "allow_pickle": True}}}, ["data.demos.path"]),
    (
        "pkl-without-allow-pickle",
        {"data": {"demos": {"source": "pkl", "path": "cache.pkl"}}},
        ["data.demos.allow_pickle", "unpickling runs arbitrary code"],
    ),
    (
        "local-model-missing-folder",
        {"model": {"source": "local", "name": "models/my-checkpoint"}},
        ["model.name", "models/my-checkpoint", "not a folder"],
    ),
    (
        "bad-value-inside-active-profile",
        {"profile": "paper_qwen3_1_7b", "profiles": {"paper_qwen3_1_7b": {"train": {"lr": -1}}}},
        ["profiles.paper_qwen3_1_7b.train.lr: must be greater than 0 (got -1)"],
    ),
    (
        "bad-value-inside-inactive-profile",
        {"profiles": {"paper_qwen3_8b": {"train": {"steps": 0}}}},
        ["profiles.paper_qwen3_8b.train.steps: must be greater than or equal to 1 (got 0)"],
    ),
    (
        "cross-field-check-inside-inactive-profile",
        {"profiles": {"paper_qwen3_8b": {"train": {"ppo_mini_batch_prompts": 256}}}},
        ["profiles.paper_qwen3_8b.train: ppo_mini_batch_prompts (256) > prompts_per_step (128)"],
    ),
    # the two defects the issue reports
    ("negative-seed", {"seed": -7}, ["seed: must be greater than or equal to 0 (got -7)"]),
    ("seed-above-numpy-range", {"seed": 2**32}, ["seed: must be less than or equal to 4294967295"]),
    ("profile-a-list", {"profile": [1, 2]}, ["profile: must be a profile name", "(got [1, 2])"]),
    # no coercion of nonsense
    ("bool-for-int", {"train": {"steps": True}}, ["train.steps: must be an integer (got True)"]),
    ("string-for-int", {"train": {"steps": "8"}}, ["train.steps: must be an integer (got '8')"]),
    ("int-for-bool", {"algorithm": {"errs": 1}}, ["algorithm.errs: must be true or false (got 1)"]),
    ("bool-for-float", {"algorithm": {"gamma": True}}, ["algorithm.gamma: must be a number (got True)"]),
    ("bool-for-level", {"data": {"synthetic": {"levels": [0, True]}}}, ["data.synthetic.levels[1]"]),
    ("int-for-string", {"model": {"name": 7}}, ["model.name: must be a string (got 7)"]),
    ("empty-string", {"tracking": {"experiment": ""}}, ["tracking.experiment: must be a non-empty string"]),
    ("nan-float", {"train": {"lr": float("nan")}}, ["train.lr: must be a finite number"]),
    ("null-section", {"model": None}, ["model: must be a mapping (got None)"]),
    ("null-run", {"runs": {"icpo": None}}, ["runs.icpo: must be a mapping (got None)"]),
    ("run-name-not-a-string", {"runs": {7: {}}}, ["runs: keys must be a string (got 7)"]),
    ("run-name-with-slash", {"runs": {"a/b": {}}}, ["runs: keys must be a name"]),
    (
        "per-benchmark-not-a-mapping",
        {"bench": {"per_benchmark": {"aime24": 32}}},
        ["bench.per_benchmark.aime24"],
    ),
    (
        "per-benchmark-bad-value",
        {"bench": {"per_benchmark": {"aime24": {"n": 0}}}},
        ["bench.per_benchmark.aime24.n: must be greater than or equal to 1 (got 0)"],
    ),
    ("profiles-not-a-mapping", {"profiles": [1]}, ["profiles: must be a mapping", "(got [1])"]),
    (
        "null-profile",
        {"profiles": {"embedded": None}},
        ["profiles.embedded: must be a mapping", "(got None)"],
    ),
    (
        "empty-list-element",
        {"bench": {"benchmarks": ["aime24", ""]}},
        ["bench.benchmarks[1]: must be a non-empty"],
    ),
    ("report-without-runs", {"report": {"runs": []}}, ["report.runs: needs at least one run"]),
    ("report-unknown-baseline", {"report": {"baseline": "grpoo"}}, ["report.baseline: a name from runs"]),
    (
        "primary-run-not-in-study",
        {"study": {"primary": {"comparisons": [["icpo", "icpo_rs"]]}}},
        ["study.primary.comparisons[0]: 'icpo_rs' is not in study.runs"],
    ),
    (
        "primary-run-is-an-ablation",  # ablations run at ablation_seeds, not at the study's seeds
        {"study": {"ablations": ["icpo_rs"], "primary": {"comparisons": [["icpo_rs", "grpo"]]}}},
        ["study.primary.comparisons[0]: 'icpo_rs' is not in study.runs"],
    ),
    (
        "primary-narrowed-study",
        {"study": {"runs": ["grpo", "icpo"], "primary": {"question": "Is ICPO better?"}}},
        ["study.primary.comparisons[0]: 'icpo_no_demos' is not in study.runs ['grpo', 'icpo']"],
    ),
    ("primary-no-comparisons", {"study": {"primary": {"comparisons": []}}}, ["study.primary.comparisons"]),
    ("primary-same-run", {"study": {"primary": {"comparisons": [["icpo", "icpo"]]}}}, ["two different runs"]),
    (
        "primary-alpha-one",
        {"study": {"primary": {"alpha": 1.0}}},
        ["study.primary.alpha: must be less than 1"],
    ),
    (
        "lora-duplicate-targets",
        {"train": {"lora": {"target_modules": ["q_proj", "q_proj"]}}},
        ["train.lora.target_modules: module names must be unique (got ['q_proj', 'q_proj'])"],
    ),
    (
        "lora-all-linear-not-alone",
        {"train": {"lora": {"target_modules": ["all-linear", "q_proj"]}}},
        ["train.lora.target_modules: all-linear already names every linear layer: list it alone"],
    ),
    (
        "lora-rank-zero",
        {"train": {"lora": {"rank": 0}}},
        ["train.lora.rank: must be greater than or equal to 1"],
    ),
    ("lora-float-alpha", {"train": {"lora": {"alpha": 16.5}}}, ["train.lora.alpha: must be an integer"]),
    ("lora-dropout-one", {"train": {"lora": {"dropout": 1.0}}}, ["train.lora.dropout: must be less than 1"]),
    (
        "profile-sets-profile",
        {"profile": "paper_qwen3_8b", "profiles": {"paper_qwen3_8b": {"profile": "embedded"}}},
        ["profiles.paper_qwen3_8b", "cannot set 'profile'"],
    ),
]


@pytest.mark.parametrize(("override", "expected"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_params_exit_2_naming_the_key(project, raw, capsys, override, expected):
    rc, err = _validate(project, deep_merge(raw, override), capsys)
    assert rc == 2
    assert err.startswith("icpo validate: invalid params:"), err
    assert err.count("\n") == 1, f"one line expected, got: {err}"
    for part in expected:
        assert part in err, f"{part!r} not in: {err}"


def test_invalid_yaml_exit_2(project, capsys):
    rc, err = _validate(project, "model: {source: [unclosed\n", capsys)
    assert rc == 2 and "not valid YAML at line" in err
    assert err.count("\n") == 1, err


def test_yaml_exponent_without_dot_is_a_float(project, raw, capsys):
    """YAML 1.1 reads ``1e-6`` as a string; a float field takes it (and ints) as the number it means."""
    rc, err = _validate(project, yaml.safe_dump(raw).replace("lr: 2.0e-05", "lr: 1e-6"), capsys)
    assert rc == 0, err
    p = parse_params(deep_merge(raw, {"train": {"lr": "1e-6"}, "algorithm": {"delta": 1}}))
    assert p.train.lr == 1e-6 and isinstance(p.train.lr, float)
    assert p.algorithm.delta == 1.0 and isinstance(p.algorithm.delta, float)


def test_inactive_profile_paths_are_not_checked_here(project, raw):
    """A profile's local files may exist only on the machines that run it; the active profile's are checked."""
    profile = {"model": {"source": "local", "name": "only/on/the/gpu/node"}}
    p = parse_params(deep_merge(raw, {"profiles": {"cluster": profile}}))
    assert p.profile == "embedded"
    with pytest.raises(ParamsError, match=r"profiles\.cluster\.model\.name: .*not a folder"):
        parse_params(deep_merge(raw, {"profile": "cluster", "profiles": {"cluster": profile}}))


def test_top_level_not_a_mapping(project, capsys):
    rc, err = _validate(project, "- just\n- a list\n", capsys)
    assert rc == 2 and "top level must be a mapping" in err


def test_missing_params_file(tmp_path, capsys):
    rc = main(["--params", str(tmp_path / "absent.yaml"), "validate"])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_repo_params_validate(project, raw, capsys):
    rc, out = _validate(project, raw, capsys, out=True)
    assert rc == 0
    assert '"source": "smollm2_gguf"' in out


def test_valid_local_sources_and_opted_in_pickle(project, raw, capsys):
    (project / "model").mkdir()
    override = {
        "model": {"source": "local", "name": "model"},
        "data": {
            "train": {"source": "local", "path": "train.jsonl"},
            "demos": {"source": "pkl", "path": "cache.pkl", "allow_pickle": True},
        },
    }
    rc, err = _validate(project, deep_merge(raw, override), capsys)
    assert rc == 0, err


def test_load_params_raises_params_error(project, raw):
    bad = deep_merge(raw, {"algorithm": {"kl_coef": -0.1}})
    (project / "params.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ParamsError, match=r"algorithm\.kl_coef"):
        load_params(project / "params.yaml")


def _resolved(raw: dict[str, Any], profile: str):
    return parse_params({**copy.deepcopy(raw), "profile": profile})


@pytest.mark.parametrize(
    ("profile", "model", "mini_batch", "micro_batch", "tp"),
    [("paper_qwen3_1_7b", "Qwen/Qwen3-1.7B", 64, 2, 1), ("paper_qwen3_8b", "Qwen/Qwen3-8B", 32, 1, 8)],
)
def test_paper_profiles_carry_released_hyperparameters(raw, profile, model, mini_batch, micro_batch, tp):
    """The released scripts' settings (docs/method.md, "Paper-scale settings")."""
    p = _resolved(raw, profile)
    assert (p.model.source, p.model.name, p.model.save_dtype) == ("hub", model, "bfloat16")
    assert (p.data.train.source, p.data.demos.source) == ("openr1_46k", "math_hub")
    assert (
        p.data.train.prompt_suffix
        == " Let's think step by step and output the final answer within \\boxed{}."
    )
    t = p.train
    assert t.engine == "verl"
    assert (t.steps, t.prompts_per_step, t.ppo_mini_batch_prompts) == (400, 128, mini_batch)
    assert (t.lr, t.weight_decay, t.grad_clip) == (1e-6, 0.01, 1.0)
    assert (t.max_prompt_length, t.max_response_length) == (4096, 8192)
    assert (t.temperature, t.top_p) == (1.0, 1.0)
    assert (t.save_freq, t.verl.test_freq) == (50, 10)
    assert (t.verl.nnodes, t.verl.n_gpus_per_node, t.verl.tensor_parallel) == (1, 8, tp)
    assert t.verl.ppo_micro_batch_size_per_gpu == micro_batch
    a = p.algorithm
    assert (a.n_on, a.n_off, a.k_demos) == (8, 1, 1)
    assert (a.clip_ratio_low, a.clip_ratio_high, a.gamma) == (0.2, 0.2, 0.1)
    assert (a.use_kl_loss, a.kl_coef, a.kl_type, a.entropy_coeff) == (True, 0.001, "low_var_kl", 0.0)
    assert a.loss_agg_mode == "token-mean"
    assert p.run_algorithm("grpo").n_off == 0


def test_embedded_profile_is_offline(raw):
    p = _resolved(raw, "embedded")
    assert (p.model.source, p.data.train.source, p.data.demos.source) == (
        "smollm2_gguf",
        "synthetic",
        "synthetic",
    )
    assert p.train.engine == "local"


def test_embedded_strict_profile_drops_only_the_format_system_turn(raw):
    default, strict = _resolved(raw, "embedded"), _resolved(raw, "embedded_strict")
    assert default.data.synthetic.system_prompt and "\\boxed{" in default.data.synthetic.system_prompt
    assert strict.data.synthetic.system_prompt is None
    assert strict.model_dump(exclude={"profile", "data"}) == default.model_dump(exclude={"profile", "data"})
    assert strict.data.model_dump(exclude={"synthetic"}) == default.data.model_dump(exclude={"synthetic"})


def test_cli_prints_a_multi_line_message_on_one_line(monkeypatch, capsys):
    import icpo_core.cli as cli

    def boom(path, sets=None):
        raise ParamsError("params.yaml: a.b: first line\n  second line")

    monkeypatch.setattr(cli, "load_params", boom)
    assert cli.main(["validate"]) == 2
    assert (
        capsys.readouterr().err == "icpo validate: invalid params: params.yaml: a.b: first line second line\n"
    )


def test_lora_targets_take_all_linear_as_peft_and_verl_spell_it(raw):
    p = parse_params(
        deep_merge(raw, {"train": {"lora": {"enabled": True, "target_modules": ["all-linear"]}}})
    )
    assert p.train.lora.peft_target_modules == "all-linear"
    p = parse_params(raw)
    assert p.train.lora.enabled is False
    assert p.train.lora.peft_target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert p.train.lora.scaling == p.train.lora.alpha / p.train.lora.rank


def test_luffy_and_reward_controls_validate_and_name_their_method():
    from icpo_core.config import AlgorithmParams

    luffy = AlgorithmParams(n_on=8, n_off=1, off_policy="expert_trace", errs=False)
    assert luffy.method == "luffy"
    assert AlgorithmParams(n_off=0, reward="random").method == "grpo_random_reward"
    assert AlgorithmParams(n_off=0, reward="format").method == "grpo_format_reward"
    with pytest.raises(ValueError, match="errs: false"):
        AlgorithmParams(n_on=8, n_off=1, off_policy="expert_trace", errs=True)
    with pytest.raises(ValueError, match="1 <= n_off < n_on"):
        AlgorithmParams(n_on=8, n_off=8, off_policy="expert_trace", errs=False)
    with pytest.raises(ValueError):
        AlgorithmParams(reward="random", random_reward_p=1.5)


def test_primary_comparison_is_preregistered_in_params(raw):
    """params.yaml preregisters the primary comparison on runs the study trains at every seed; a params file
    that writes no primary and does not train the default's runs has none (the report says so)."""
    p = parse_params(raw)
    assert p.study.primary is not None and p.report.baseline == "grpo"
    assert ["icpo", "icpo_no_demos"] in p.study.primary.comparisons and p.study.primary.measure == "avg"
    assert {r for pair in p.study.primary.comparisons for r in pair} <= set(p.study.runs)
    assert p.run_algorithm("icpo_no_demos").off_policy == "ief_no_demos"  # IEF rows from the plain prompt
    narrowed = copy.deepcopy(raw)
    narrowed["study"] = {"runs": ["grpo", "icpo"]}
    assert parse_params(narrowed).study.primary is None
    assert parse_params(deep_merge(raw, {"study": {"primary": None}})).study.primary is None
    listed = deep_merge(raw, {"study": {"primary": {"measure": ["synthetic_l0", "synthetic_l1"]}}})
    assert parse_params(listed).study.primary.measure == ["synthetic_l0", "synthetic_l1"]
    for bad in ([], ["avg", "synthetic_l0"]):
        with pytest.raises(ValueError, match="a list names one or more benchmarks"):
            parse_params(deep_merge(raw, {"study": {"primary": {"measure": bad}}}))


def test_typed_defaults_are_params_yaml():
    """params.yaml is the one place a default lives: the typed model repeats its embedded sections exactly, so a
    params file that leaves a key out (or code that builds ``Params()``) gets the embedded default."""
    from icpo_core.config import AlgorithmParams, Params

    repo = load_params(REPO_PARAMS)
    typed = Params()
    assert typed.model_dump(exclude={"profiles"}) == repo.model_dump(exclude={"profiles"})
    assert AlgorithmParams() == repo.algorithm
    for name in repo.runs:
        assert typed.run_algorithm(name) == repo.run_algorithm(name)
