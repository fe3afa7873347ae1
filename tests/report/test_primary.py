"""The preregistered primary comparison: the decision rule's three outcomes on constructed data, the report's
first section, the exploration gap (metrics/regime.json) and the training-process measures over seeds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from tests_report_helpers import make_params

from icpo_core.report.labels import LUFFY_INFORMATION
from icpo_core.report.markdown import primary_markdown, regime_markdown
from icpo_core.report.mlflow_runs import primary_tags, study_metrics
from icpo_core.report.stats import t_interval, t_quantile
from icpo_core.report.study_data import AVERAGE, Diff, Study
from icpo_core.report.study_stats import build_study, format_mde, measure_columns, verdict

BENCH = "synthetic_l0"
N_PROBLEMS = 40
SEEDS = (0, 1, 2)
QUESTION = "Do the demos, not the extra rollouts, make ICPO's gain?"


def _pattern(seed: int, correct_of_10: int) -> np.ndarray:
    """Problem j is correct when (j + seed) mod 10 < correct_of_10: a shifted, exactly known accuracy."""
    return np.array([(j + seed) % 10 < correct_of_10 for j in range(N_PROBLEMS)])


def _write(root: Path, name: str, correct: np.ndarray, steps: list[dict] | None = None) -> None:
    rows = [
        {"benchmark": BENCH, "problem_id": f"p{j:02d}", "sample": 0, "correct": bool(c)}
        for j, c in enumerate(correct)
    ]
    (root / "bench" / name).mkdir(parents=True, exist_ok=True)
    (root / "bench" / name / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "metrics").mkdir(exist_ok=True)
    b = {
        "avg_at_n": float(correct.mean()),
        "no_answer_rate": float(1.0 - correct.mean()) / 2,  # half the wrong samples gave no answer
        "mean_tokens": 30.0 + 10.0 * float(correct.mean()),
        "n": 1,
        "n_problems": N_PROBLEMS,
        "sampling": {"n": 1, "temperature": 0},
    }
    (root / "metrics" / f"bench_{name}.json").write_text(json.dumps({"benchmarks": {BENCH: b}}))
    if steps is not None:
        (root / "metrics" / f"steps_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))


def _steps(seed: int, scale: float) -> list[dict]:
    return [
        {
            "step": s,
            "reward/on_policy": scale * (0.2 + 0.1 * s) + 0.02 * seed,
            "icpo/on_policy_groups_with_signal": 0.5 + 0.05 * seed,
            "icpo/accept_rate": 0.4,
            "actor/pg_clipfrac": float("nan") if s == 1 else 0.01 * (seed + 1),  # NaN steps are skipped
        }
        for s in (1, 2, 3, 4)
    ]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """icpo 60-70 %; icpo_no_demos 20 % (icpo - it: +40, supports); grpo 90 % (icpo - grpo: -27, contradicts);
    icpo_rs = icpo with one problem flipped each way per seed (the same per-seed scores: inconclusive)."""
    for s in SEEDS:
        icpo = _pattern(s, 7 if s == 2 else 6)
        _write(tmp_path, f"icpo_s{s}", icpo, _steps(s, 1.0))
        _write(tmp_path, f"icpo_no_demos_s{s}", _pattern(s, 2), _steps(s, 0.5))
        _write(tmp_path, f"grpo_s{s}", _pattern(s, 9), _steps(s, 0.8))
        rs = icpo.copy()
        on, off = np.flatnonzero(icpo), np.flatnonzero(~icpo)
        rs[on[s]], rs[off[s]] = False, True
        _write(tmp_path, f"icpo_rs_s{s}", rs)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def primary_params(**primary):
    study = {
        "runs": ["grpo", "icpo", "icpo_no_demos", "icpo_rs"],
        "ablations": [],
        "primary": {
            "question": QUESTION,
            "comparisons": [["icpo", "icpo_no_demos"], ["icpo", "grpo"], ["icpo", "icpo_rs"]],
            **primary,
        },
    }
    return make_params(bench={"benchmarks": [BENCH]}, seeds=list(SEEDS), study=study)


def test_verdict_rule_on_constructed_differences():
    def diff(lo: float, hi: float) -> Diff:
        return Diff(diff=(lo + hi) / 2, ci_low=lo, ci_high=hi, p=0.5, n_seeds_a=3, n_seeds_b=3, n_problems=40)

    assert verdict(diff(0.5, 9.0), 4.0) == ("supports", "supports")
    assert verdict(diff(-9.0, -0.5), 4.0) == ("contradicts", "contradicts")
    assert verdict(diff(-3.0, 5.0), 12.3) == ("inconclusive", "inconclusive at MDE 12 points")
    assert verdict(diff(0.0, 5.0), 4.56)[1] == "inconclusive at MDE 4.6 points"  # touching 0 is not above it
    assert verdict(diff(-1.0, 1.0), 0.456, seed_variance_known=False)[1] == (
        "inconclusive at MDE 0.46 points (problem noise only: 1 seed)"
    )
    assert verdict(None, None)[0] == "n/a"
    assert format_mde(23.4) == "23"


def test_primary_outcomes_on_a_constructed_study(project):
    study = build_study(primary_params(), n_boot=400, n_perm=2000)
    pr = study.primary
    assert pr is not None and pr.question == QUESTION and pr.measure == "avg"
    got = {(r.a, r.b): r for r in pr.comparisons}
    demos, grpo, rs = got[("icpo", "icpo_no_demos")], got[("icpo", "grpo")], got[("icpo", "icpo_rs")]
    assert demos.verdict == "supports" and demos.diff.ci_low > 0 and 35 < demos.diff.diff < 45
    assert grpo.verdict == "contradicts" and grpo.diff.ci_high < 0
    assert rs.verdict == "inconclusive" and rs.diff.diff == pytest.approx(0.0, abs=1e-9)
    assert rs.diff.ci_low < 0 < rs.diff.ci_high and rs.mde > 0 and rs.seed_variance_known
    assert rs.verdict_text == f"inconclusive at MDE {format_mde(rs.mde)} points"
    for r in pr.comparisons:  # seeds, problems and both p-values are stated
        d = r.diff
        assert (d.n_seeds_a, d.n_seeds_b, d.n_problems) == (3, 3, N_PROBLEMS)
        assert d.p_seeds is not None and d.p_seeds_min == pytest.approx(0.1) and 0 < d.p <= 1
    # at alpha 0.05 the primary numbers are the secondary table's Avg. row of the same pair (same draws)
    assert study.comparisons["icpo-grpo"].average == grpo.diff
    assert (
        study.comparisons["icpo-grpo"].role == "primary"
        and study.comparisons["icpo_rs-grpo"].role == "secondary"
    )
    # a stricter alpha: a wider interval, a larger MDE
    strict = build_study(primary_params(alpha=0.01), n_boot=400, n_perm=2000).primary.comparisons[2]
    assert strict.diff.ci_high - strict.diff.ci_low > rs.diff.ci_high - rs.diff.ci_low and strict.mde > rs.mde


def run_report(params) -> int:
    from icpo_core.stages import report

    return report.run(
        argparse.Namespace(params_obj=params, runs=None, seeds=None, n_boot=400, no_mlflow=True)
    )


def test_report_leads_with_the_primary_comparison(project):
    assert run_report(primary_params()) == 0
    md = (project / "reports/report.md").read_text()
    sections = md.split("\n## ")
    first = sections[1]
    assert first.startswith("Primary comparison (preregistered)")
    assert QUESTION in first and "**Decision rule**" in first and "the 95 % CI of a − b lies above 0" in first
    head = [x for x in first.splitlines() if x.startswith("| Comparison |")][0]
    for col in (
        "Δ points [95 % CI]",
        "p (seeds)",
        "p (problems)",
        "MDE (80 % power)",
        "Seeds A / B",
        "Problems",
    ):
        assert col in head
    verdicts = [x for x in first.splitlines() if x.startswith("- Verdict,")]
    assert len(verdicts) == 3  # one line per comparison
    assert verdicts[0] == "- Verdict, ICPO − ICPO without demos (`icpo` − `icpo_no_demos`): **supports**"
    assert verdicts[1].endswith("(`icpo` − `grpo`): **contradicts**")
    assert "(`icpo` − `icpo_rs`): **inconclusive at MDE " in verdicts[2] and verdicts[2].endswith(" points**")
    row = [x for x in first.splitlines() if x.startswith("| ICPO − GRPO (`icpo` − `grpo`) |")][0]
    assert "| 0.10 (min 0.10) | <0.001 |" in row  # p over seeds with its floor, p over problems
    assert "| 3 / 3 | 40 |" in row
    # the exploration gap right under it: absent here, said in one line
    assert "### Exploration gap (the regime)" in first
    assert "`metrics/regime.json` absent: the exploration gap is not measured here." in first
    # then the rest, the comparisons labelled secondary (but the primary pairs' measure rows)
    titles = [s.splitlines()[0] for s in sections[1:]]
    assert titles[1] == "Method" and any(t.startswith("Secondary comparisons") for t in titles)
    secondary = next(s for s in sections if s.startswith("Secondary comparisons"))
    assert "| primary · ICPO − GRPO (`icpo` − `grpo`) | Avg. |" in secondary
    assert "| secondary · ICPO − GRPO (`icpo` − `grpo`) | Synth L0 |" in secondary
    assert "| secondary · GRPO" not in secondary and "| secondary · ICPO without demos − GRPO" in secondary
    assert LUFFY_INFORMATION in md  # LUFFY is named as the upper reference it is
    # study.json and the MLflow metrics carry the same
    study = json.loads((project / "reports/study.json").read_text())
    assert [r["verdict"] for r in study["primary"]["comparisons"]] == [
        "supports",
        "contradicts",
        "inconclusive",
    ]
    flat = study_metrics(study)
    assert flat["primary/icpo-icpo_no_demos/verdict"] == 1.0 and flat["primary/icpo-grpo/verdict"] == -1.0
    assert flat["primary/icpo-icpo_rs/verdict"] == 0.0 and flat["primary/icpo-icpo_rs/mde"] > 0
    assert primary_tags(study)["icpo.primary.icpo-grpo"] == "contradicts"
    # icpo compare re-renders the same first section from study.json
    assert primary_markdown(Study.model_validate(study)) in md


def test_exploration_gap_from_regime_json(project):
    regime = {
        "problems": 64,
        "k": 8,
        "levels": [0, 1],
        "zero_shot": {"groups_with_signal": 0.12, "ci": [0.07, 0.18], "mean_reward": 0.03},
        "with_demos": {"groups_with_signal": 0.61, "ci": [0.52, 0.7], "mean_reward": 0.41},
    }
    (project / "metrics" / "regime.json").write_text(json.dumps(regime))
    study = build_study(primary_params(), n_boot=100, n_perm=100)
    text = regime_markdown(study)
    assert "**0-shot 0.12 [0.07, 0.18]** vs **with demos 0.61 [0.52, 0.70]**" in text
    assert "on 64 problems" in text and "k = 8" in text and "levels 0, 1" in text
    assert study_metrics(study.to_json())["regime/with_demos/ci_low"] == 0.52
    (project / "metrics" / "regime.json").write_text(json.dumps({"problems": 3}))
    bad = build_study(primary_params(), n_boot=100, n_perm=100)
    assert bad.regime is None and "unexpected shape" in regime_markdown(bad)


def test_training_process_measures_with_t_intervals_across_seeds(project):
    study = build_study(primary_params(), n_boot=100, n_perm=100)
    m = study.runs["icpo"].process["reward/on_policy"]
    per_seed = [np.mean([0.2 + 0.1 * s + 0.02 * seed for s in (1, 2, 3, 4)]) for seed in SEEDS]
    assert m.per_seed == pytest.approx(dict(zip(("0", "1", "2"), per_seed, strict=True)))
    half = t_quantile(0.95, 2) * np.std(per_seed, ddof=1) / np.sqrt(3)
    assert (m.mean, m.ci_low, m.ci_high) == pytest.approx(
        (np.mean(per_seed), np.mean(per_seed) - half, np.mean(per_seed) + half)
    )
    clip = study.runs["icpo"].process["actor/pg_clipfrac"]
    assert clip.per_seed == pytest.approx({"0": 0.01, "1": 0.02, "2": 0.03})  # the NaN step left out
    assert study.runs["icpo_rs"].process["reward/on_policy"].mean is None  # no step log: n/a
    assert run_report(primary_params()) == 0
    md = (project / "reports/report.md").read_text()
    assert "## Training process and held-out answers [95 % interval across seeds]" in md and "Student-t" in md
    line = [x for x in md.splitlines() if x.startswith("| ICPO | `icpo` |") and "(3 seeds)" in x][0]
    # 4 logged training measures + 2 held-out answer measures; the truncation share is not in these logs
    assert line.count("(3 seeds)") == 6 and line.count("n/a") == 1
    assert [
        x
        for x in md.splitlines()
        if x.startswith("| ICPO† | `icpo_rs` |") and "n/a | n/a | n/a | n/a | n/a |" in x and "(3 seeds)" in x
    ]


def test_held_out_answer_measures_per_seed_from_the_bench_files(project):
    study = build_study(primary_params(), n_boot=100, n_perm=100)
    accuracy = {str(s): (7 if s == 2 else 6) / 10 for s in SEEDS}  # icpo's per-seed accuracy
    no_answer = study.runs["icpo"].process["bench/no_answer_rate"]
    assert no_answer.per_seed == pytest.approx({k: (1 - a) / 2 for k, a in accuracy.items()})
    assert no_answer.n_seeds == 3 and no_answer.ci_low < no_answer.mean < no_answer.ci_high
    tokens = study.runs["grpo"].process["bench/mean_tokens"]
    assert tokens.per_seed == pytest.approx({str(s): 39.0 for s in SEEDS})
    assert run_report(primary_params()) == 0
    md = (project / "reports/report.md").read_text()
    assert "Held-out samples with no answer" in md and "Held-out response tokens" in md


def test_t_interval_matches_the_t_table():
    assert t_quantile(0.95, 1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(0.95, 2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(0.95, 10) == pytest.approx(2.228, abs=1e-3)
    assert t_quantile(0.90, 5) == pytest.approx(2.015, abs=1e-3)
    assert t_interval([1.0]) == (1.0, None, None)
    mean, lo, hi = t_interval([1.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(12.706 * np.sqrt(2) / np.sqrt(2), abs=1e-3)


def test_a_list_measure_averages_its_benchmarks_only(project):
    """``measure: [names]``: the mean over those benchmarks (e.g. the greedy levels when sampled ones are benched
    too); a named benchmark the report has not got gives n/a, not a verdict on something else."""
    assert measure_columns("avg", ["l0", "l1", "l0_avg4"]) == (AVERAGE, ["l0", "l1", "l0_avg4"])
    assert measure_columns(["l0", "l1"], ["l0", "l1", "l0_avg4"]) == (AVERAGE, ["l0", "l1"])
    assert measure_columns("l1", ["l0", "l1"]) == ("l1", ["l1"])
    avg = build_study(primary_params(), n_boot=200, n_perm=200).primary
    listed = build_study(primary_params(measure=[BENCH]), n_boot=200, n_perm=200).primary
    assert listed.measure == [BENCH]
    assert [r.diff for r in listed.comparisons] == [
        r.diff for r in avg.comparisons
    ]  # one benchmark: its mean
    absent = build_study(primary_params(measure=[BENCH, "synthetic_l1"]), n_boot=200, n_perm=200).primary
    assert {r.verdict for r in absent.comparisons} == {"n/a"}
    assert run_report(primary_params(measure=[BENCH])) == 0
    md = (project / "reports/report.md").read_text()
    assert f"**Measure.** `[{BENCH}]`: the unweighted mean over the benchmarks `{BENCH}`, in points" in md


def test_the_report_names_the_machine_kinds_the_runs_trained_on(project):
    """A verdict holds for the machine kinds its runs trained on (bf16 kernels differ): one kind is named and
    not claimed for others; mixed kinds are counted; summaries without a machine are reported as such."""
    amx = {"cpu": "Example CPU A", "cores": 2, "cpu_bf16": "amx", "gpu": None}
    avx = {"cpu": "Example CPU B", "cores": 2, "cpu_bf16": "none", "gpu": None}
    instances = [f"{r}_s{s}" for r in ("grpo", "icpo", "icpo_no_demos", "icpo_rs") for s in SEEDS]
    for name in instances:
        (project / "metrics" / f"train_{name}.json").write_text(
            json.dumps({"instance": name, "machine": amx})
        )
    study = build_study(primary_params(), n_boot=100, n_perm=100)
    assert list(study.machines) == ["Example CPU A (2 cores, bf16: amx)"]
    assert sorted(study.machines["Example CPU A (2 cores, bf16: amx)"]) == sorted(instances)
    text = primary_markdown(study)
    assert f"All {len(instances)} trained runs ran on one machine kind, Example CPU A" in text
    assert "not checked on another kind" in text
    (project / "metrics" / "train_grpo_s0.json").write_text(json.dumps({"machine": avx}))
    (project / "metrics" / "train_grpo_s1.json").write_text(json.dumps({"instance": "grpo_s1"}))
    study = build_study(primary_params(), n_boot=100, n_perm=100)
    assert study.machines["Example CPU B (2 cores, bf16: none)"] == ["grpo_s0"]
    assert study.machines_unrecorded == ["grpo_s1"]
    text = primary_markdown(study)
    assert "ran on 2 machine kinds" in text and "Not recorded for 1 run(s)" in text
