"""The paper profiles run the paper's experiment: its study (arms, one seed, primary comparison), DVC told the same,
its benchmarks, the cost estimates, and ``icpo validate`` listing it all."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from icpo_core.cli import main
from icpo_core.config import (
    ParamsError,
    apply_sets,
    deep_merge,
    dvc_study_problem,
    is_paper_profile,
    load_params,
    parse_params,
    study_command,
)
from icpo_core.engines import estimates

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())
PAPER = ["paper_qwen3_1_7b", "paper_qwen3_8b"]


def _resolved(profile: str, raw=RAW):
    return parse_params({**copy.deepcopy(raw), "profile": profile})


@pytest.mark.parametrize("profile", PAPER)
def test_a_paper_profile_trains_the_papers_study_at_one_seed(profile):
    """GRPO, ICPO and ICPO-dagger at one seed (the paper reports single runs), the primary comparison on them,
    LUFFY and the controls opt-in; the embedded default keeps its own study."""
    p = _resolved(profile)
    assert is_paper_profile(p.profile)
    assert p.seeds == [0] and p.study.runs == ["grpo", "icpo", "icpo_rs"]
    assert p.study.ablations == [] and p.study.ablation_seeds == [0]  # ablations: opt-in at the top level
    assert p.study.primary is not None
    assert p.study.primary.comparisons == [["icpo", "grpo"], ["icpo_rs", "grpo"]]
    assert p.run_algorithm("icpo_rs").reward_shaping and p.run_algorithm("grpo").n_off == 0
    assert p.bench.benchmarks == ["paper_tables"]
    embedded = _resolved("embedded")
    assert embedded.seeds == [0, 1, 2, 3] and embedded.study.runs == ["grpo", "icpo", "icpo_no_demos"]
    assert not is_paper_profile("embedded")


def test_a_profile_primary_comparison_must_name_runs_of_its_own_study():
    raw = deep_merge(
        RAW, {"profiles": {"paper_qwen3_8b": {"study": {"primary": {"comparisons": [["luffy", "grpo"]]}}}}}
    )
    with pytest.raises(
        ParamsError, match=r"profiles\.paper_qwen3_8b\.study\.primary\.comparisons\[0\]: 'luffy'"
    ):
        parse_params(raw)
    raw = deep_merge(RAW, {"profiles": {"paper_qwen3_8b": {"study": {"runs": []}}}})
    with pytest.raises(ParamsError, match=r"profiles\.paper_qwen3_8b\.study\.runs: at least one run"):
        parse_params(raw)


@pytest.mark.parametrize("profile", PAPER)
def test_a_dvc_stage_under_a_profile_alone_stops_naming_the_full_command(profile, capsys, monkeypatch):
    """DVC expands train@ stages from params.yaml's top-level study / seeds (its templating cannot see a
    profile): a stage run with only -S profile=... would train the embedded study's arms and seeds. It stops
    before any work, naming the command that trains the profile's study; with that command it proceeds."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("DVC_STAGE", "base_model")
    assert main(["-S", f"profile={profile}", "validate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    command = study_command(_resolved(profile), RAW)
    assert command in err and "study.runs ['grpo', 'icpo', 'icpo_rs']" in err
    assert command == (
        f"dvc exp run -S profile={profile} -S 'seeds=[0]' -S 'study.runs=[grpo,icpo,icpo_rs]' -S study.primary=null"
    )
    sets = [part.strip("'") for part in command.split(" -S ")[1:]]
    assert dvc_study_problem(apply_sets(RAW, sets), load_params(ROOT / "params.yaml", sets)) is None
    assert main(["validate", *[a for s in sets for a in ("-S", s)]]) == 0
    # an opted-in ablation at the top level: the check asks for the profile's ablation seed as well
    with_luffy = [*sets, "study.ablations=[luffy]"]
    problem = dvc_study_problem(apply_sets(RAW, with_luffy), load_params(ROOT / "params.yaml", with_luffy))
    assert problem is not None and "-S 'study.ablation_seeds=[0]'" in problem
    monkeypatch.delenv("DVC_STAGE")
    assert main(["-S", f"profile={profile}", "validate"]) == 0  # outside DVC: nothing to check


def test_set_overrides_apply_before_and_after_the_sub_command(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    p = load_params(ROOT / "params.yaml", ["profile=paper_qwen3_8b", "train.device=cpu", "train.lr=1e-5"])
    assert (p.profile, p.train.device, p.train.lr) == ("paper_qwen3_8b", "cpu", 1e-6)  # the profile's lr wins
    assert main(["validate", "-S", "train.steps=true"]) == 2
    assert "train.steps: must be an integer (got True)" in capsys.readouterr().err
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        apply_sets(RAW, ["train.device"])


def test_validate_lists_each_paper_profiles_stages_benchmarks_and_costs(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["validate"]) == 0
    out, err = capsys.readouterr()
    assert '"profile": "embedded"' in out  # stdout stays the resolved config
    for profile in PAPER:
        assert f"profile {profile}: 1 seed(s) [0], stages train@grpo-0, train@icpo-0, train@icpo_rs-0" in err
        assert study_command(_resolved(profile), RAW) in err
    assert "numinamath (hub AI-MO/NuminaMath-CoT (split test))" in err
    assert "gsm8k (hub openai/gsm8k (config main, split test))" in err
    assert "grpo ~1,333, icpo ~1,500, icpo_rs ~1,500" in err


def test_gpu_hour_estimates_count_every_row_a_step_processes():
    p = _resolved("paper_qwen3_8b")
    rows = {r: estimates.rows_per_prompt(p.run_algorithm(r)) for r in p.runs}
    assert rows["grpo"] == rows["luffy"] == rows["grpo_released"] == 8  # LUFFY: 7 rollouts + 1 trace
    assert rows["icpo"] == rows["icpo_rs"] == rows["icpo_no_demos"] == 9  # + 1 IEF rollout
    assert rows["grpo_compute_matched"] == 12
    assert estimates.tokens_per_step(p, "grpo") == 128 * 8 * 8192
    assert round(estimates.gpu_hours(p, "grpo")) == 1333 and round(estimates.gpu_hours(p, "icpo")) == 1500
    padded = estimates.gpu_hours(p, "grpo", estimates.PUBLISHED_THROUGHPUT_PADDED)
    assert padded / estimates.gpu_hours(p, "grpo") == pytest.approx(699 / 128)


def test_top_level_ablations_of_the_embedded_study_leave_the_paper_profiles_valid():
    """`dvc exp run -S 'study.ablations=[icpo_rs,...]'` (README) ablates the embedded study; the paper profiles
    train icpo_rs as a main arm, which is no conflict until one of them is the study DVC expands."""
    raw = deep_merge(RAW, {"study": {"ablations": ["icpo_rs", "icpo_no_errs"]}})
    assert parse_params(raw).study.ablations == ["icpo_rs", "icpo_no_errs"]
    with pytest.raises(ParamsError, match=r"study.ablations repeats study.runs \['icpo_rs'\]"):
        parse_params({**raw, "profile": "paper_qwen3_8b"})
