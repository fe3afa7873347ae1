"""``icpo report`` / ``icpo compare`` on small synthetic seed studies made in tmp_path (no model)."""

from __future__ import annotations

import argparse
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests_report_helpers import make_params

from icpo_core.report.curves import plot_data, read_steps
from icpo_core.report.markdown import comparison_markdown, summary_markdown
from icpo_core.report.stats import ci_decimals
from icpo_core.report.study_data import Study
from icpo_core.report.study_stats import build_study

GREEDY, SAMPLED = "synthetic_l0", "synthetic_l1"
N_PROBLEMS = 60


def study_params():
    study = {"runs": ["grpo", "icpo"], "ablations": ["icpo_rs", "icpo_no_errs"], "ablation_seeds": [0]}
    study["primary"] = {"comparisons": [["icpo", "grpo"]]}
    return make_params(bench={"benchmarks": [GREEDY, SAMPLED]}, seeds=[0, 1, 2], study=study)


def write_instance(root: Path, name: str, acc: float, seed: int, steps: bool = True) -> None:
    """samples.jsonl + bench metrics (+ steps) of one instance: greedy level 0, 4 samples at T 0.6 on level 1."""
    r = np.random.default_rng([zlib.crc32(name.encode()), seed])
    rows, bench = [], {}
    for b, n, t in ((GREEDY, 1, 0.0), (SAMPLED, 4, 0.6)):
        correct = r.random((N_PROBLEMS, n)) < acc
        rows += [
            {"benchmark": b, "problem_id": f"{b}-{j}", "sample": k, "correct": bool(correct[j, k])}
            for j in range(N_PROBLEMS)
            for k in range(n)
        ]
        bench[b] = {"avg_at_n": float(correct.mean()), "n": n, "n_problems": N_PROBLEMS}
        bench[b]["sampling"] = {"n": n, "temperature": t}
    (root / "bench" / name).mkdir(parents=True, exist_ok=True)
    (root / "bench" / name / "samples.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in rows) + '{"tor'
    )
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / f"bench_{name}.json").write_text(json.dumps({"run": name, "benchmarks": bench}))
    if steps:
        lines = [
            {
                "step": s,
                "reward/on_policy": acc * s / 4 + 0.01 * seed,
                "reward/expert_region": 0.8 if "icpo" in name else None,
                "icpo/accept_rate": 0.5,
                "actor/kl": 0.001 * s,
                "actor/entropy": 1.0 - 0.1 * s,
            }
            for s in (1, 2, 3, 4)
        ]
        (root / "metrics" / f"steps_{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """base; grpo at seeds 0-2 (30 %); icpo at seeds 0-1 (75 %; seed 2 not run); icpo_rs at seed 0; no
    icpo_no_errs at all."""
    write_instance(tmp_path, "base", 0.1, 0, steps=False)
    for s in (0, 1, 2):
        write_instance(tmp_path, f"grpo_s{s}", 0.3, s)
    for s in (0, 1):
        write_instance(tmp_path, f"icpo_s{s}", 0.75, s)
    write_instance(tmp_path, "icpo_rs_s0", 0.3, 0)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_report(params: Any, **kw: Any) -> int:
    from icpo_core.stages import report

    ns = argparse.Namespace(params_obj=params, runs=None, seeds=None, n_boot=800, no_mlflow=True)
    for k, v in kw.items():
        setattr(ns, k, v)
    return report.run(ns)


def row(md: str, run: str, start: str = "| ") -> list[str]:
    """The cells of the first table row of ``run`` (the results summary comes first)."""
    line = next(x for x in md.splitlines() if f"| `{run}` |" in x and x.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


CELL = re.compile(r"^([+-]?\d+(?:\.(\d+))?) \[([+-]?\d+(?:\.\d+)?), ([+-]?\d+(?:\.\d+)?)\]$")


def check_digits(cell: str) -> float:
    """A cell "m [lo, hi]" claims exactly the decimals its CI half-width supports; returns m."""
    m = CELL.match(cell)
    assert m, cell
    decimals = len(m.group(2) or "")
    lo, hi = float(m.group(3)), float(m.group(4))
    assert lo <= float(m.group(1)) <= hi
    # the printed bounds are rounded at `decimals`, so the true half-width is within one unit of that digit
    assert abs(decimals - ci_decimals(lo, hi)) <= 1, cell
    return float(m.group(1))


def test_report_means_cis_pairs_spread_and_na(project, capsys):
    params = study_params()
    assert run_report(params) == 0
    md = (project / "reports/report.md").read_text()
    study = json.loads((project / "reports/study.json").read_text())

    # (a) main table: means with CIs and seed counts; icpo ran 2 of its 3 seeds, the ablation at its one seed
    header = [x for x in md.splitlines() if x.startswith("| Method | Run | Seeds |")][0]
    assert "Synth L0 (greedy)" in header and "Synth L1 (avg@4, T 0.6)" in header
    grpo, icpo = row(md, "grpo"), row(md, "icpo")
    assert (
        grpo[2] == "3" and icpo[2] == "2 of 3" and row(md, "icpo_rs")[2] == "1" and row(md, "base")[2] == "1"
    )
    for cell in [*grpo[3:], *icpo[3:]]:
        check_digits(cell)
    assert 20 < check_digits(grpo[3]) < 40 and 65 < check_digits(icpo[3]) < 85
    assert row(md, "icpo_no_errs")[2:] == ["n/a"] * 4  # never ran: n/a, no crash
    assert "`icpo_no_errs`: `icpo_no_errs_s0`" in md and "`icpo_s2`" in md  # listed as not run yet

    # per-benchmark rows: problems per cell, pass@k only where the bench sampled
    l1 = [x for x in md.splitlines() if x.startswith("| Synth L1 | ICPO | `icpo` |")][0]
    assert "| 2 | 60 |" in l1 and "pass@4 " in l1
    l0 = [x for x in md.splitlines() if x.startswith("| Synth L0 | ICPO | `icpo` |")][0]
    assert l0.rstrip(" |").endswith("n/a") and "| greedy |" in l0

    # study.json agrees with the samples: the mean is the mean of the per-problem scores over the seeds
    samples = [
        json.loads(x)
        for s in (0, 1)
        for x in (project / f"bench/icpo_s{s}/samples.jsonl").read_text().splitlines()[:-1]
    ]
    greedy = [x["correct"] for x in samples if x["benchmark"] == GREEDY]
    c = study["runs"]["icpo"]["benchmarks"][GREEDY]
    assert c["mean"] == pytest.approx(100 * np.mean(greedy))
    assert c["ci_low"] < c["mean"] < c["ci_high"] and c["n_seeds"] == 2 and c["n_problems"] == N_PROBLEMS
    assert set(c["per_seed"]) == {"0", "1"} and c["seed_min"] <= c["mean"] <= c["seed_max"]
    assert study["runs"]["icpo"]["benchmarks"][SAMPLED]["pass_k"] == 4
    assert study["runs"]["icpo_no_errs"]["benchmarks"][GREEDY]["mean"] is None
    assert study["runs"]["icpo_rs"]["instances"] == {"0": "icpo_rs_s0"}
    assert study["baseline"] == "grpo" and study["unit"] == "percent"

    # (b) paired comparisons with the baseline: ICPO is far better (45 points), the ablation equal in truth
    d = study["comparisons"]["icpo-grpo"]
    assert d["a"] == "icpo" and d["b"] == "grpo"
    for v in [*d["benchmarks"].values(), d["average"]]:
        assert v["ci_low"] > 0 and v["p"] < 0.01 and v["n_seeds_a"] == 2 and v["n_seeds_b"] == 3
    rs = study["comparisons"]["icpo_rs-grpo"]["average"]  # same true accuracy: a small difference
    runs = study["runs"]
    assert rs["diff"] == pytest.approx(runs["icpo_rs"]["average"]["mean"] - runs["grpo"]["average"]["mean"])
    assert abs(rs["diff"]) < 15 and rs["ci_low"] < rs["diff"] < rs["ci_high"] and rs["n_seeds_a"] == 1
    assert study["comparisons"]["icpo_no_errs-grpo"]["average"] is None
    cmp_line = [x for x in md.splitlines() if "(`icpo` − `grpo`) | Avg. |" in x][0]
    assert check_digits(cmp_line.split("|")[3].strip()) > 20 and "| <0.001 |" in cmp_line
    assert "| 2 / 3 | 120 |" in cmp_line
    assert "(`icpo_no_errs` − `grpo`) | Avg. | n/a |" in md

    # (b2) power: the ICPO - GRPO difference is resolved (no verdict); the equal-accuracy ablation's CI spans
    # zero, so it reads "not detectable" with its MDE; one seed: the seed variance is unknown and said so
    pw = d["power"]["average"]
    assert (
        pw["mde"] == pytest.approx(2.801585 * pw["se"]) and pw["n_seeds_a"] == 2 and pw["n_problems"] == 120
    )
    assert pw["var_seed_a"] is not None and pw["var_problem"] > 0
    assert "not detectable" not in cmp_line and cmp_line.split("|")[-3].strip() == f"{pw['mde']:.0f}"
    rs_line = [x for x in md.splitlines() if "(`icpo_rs` − `grpo`) | Avg. |" in x][0]
    rs_pw = study["comparisons"]["icpo_rs-grpo"]["power"]["average"]
    assert rs_pw["var_seed_a"] is None  # one seed
    assert rs["ci_high"] < 0 and "not detectable" not in rs_line  # this draw resolves a difference
    assert f"| {rs_pw['mde']:.0f} (1 seed) | n/a |" in rs_line  # no seed count without a seed variance
    spanning = json.loads(json.dumps(study))
    spanning["comparisons"]["icpo_rs-grpo"]["average"].update(ci_low=-5.0, ci_high=3.0)
    rs_line = [
        x
        for x in comparison_markdown(Study.model_validate(spanning)).splitlines()
        if "(`icpo_rs` − `grpo`) | Avg. |" in x
    ][0]
    assert (
        f"not detectable at this size (MDE {rs_pw['mde']:.0f} points, problem noise only: 1 seed)" in rs_line
    )
    # the markdown re-rendered from study.json states the same power figures
    assert comparison_markdown(Study.model_validate(study)) == comparison_markdown(
        build_study(params, n_boot=800)
    )

    # (c) spread: each seed's score, min-max
    spread = [x for x in md.splitlines() if x.startswith("| GRPO | `grpo` | Synth L0 |") and "s0 " in x][0]
    assert "s0 " in spread and "s1 " in spread and "s2 " in spread and "–" in spread

    # the DVC plots file: per step the mean over seeds with the min-max band
    plot = json.loads((project / "reports/plots/steps_grpo.json").read_text())
    assert [r["step"] for r in plot] == [1, 2, 3, 4] and plot[0]["n_seeds"] == 3
    assert plot[0]["reward/on_policy"] == pytest.approx(0.3 / 4 + 0.01)
    assert plot[0]["reward/on_policy/min"] == pytest.approx(0.3 / 4) and plot[0]["reward/on_policy/max"] == (
        pytest.approx(0.3 / 4 + 0.02)
    )
    assert json.loads((project / "reports/plots/steps_icpo_no_errs.json").read_text()) == []
    # curves PNG written, wide layout of five panels
    head = (project / "reports/curves.png").read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width > height > 300
    assert "`grpo` 3 seed(s), 4 steps" in md and "min-max" in md
    assert "| GRPO s1 | `grpo_s1` |" in md  # training summary per instance
    table = json.loads((project / "reports/table.json").read_text())
    assert [r["run"] for r in table["rows"]] == ["base", "grpo", "icpo", "icpo_rs", "icpo_no_errs"]

    # the study.json round-trips into the same table (what `icpo compare` prints from MLflow)
    assert summary_markdown(Study.model_validate(study)) == summary_markdown(build_study(params, n_boot=800))
    assert "| Method | Run | Seeds |" in capsys.readouterr().out


def test_study_is_reproducible_and_seed_override(project):
    params = study_params()
    a = build_study(params, n_boot=500).to_json()
    b = build_study(params, n_boot=500).to_json()
    assert a == b  # seeded resampling: the same files give the same CIs
    one = build_study(params, seeds=[0], n_boot=500)
    assert one.to_json()["runs"]["grpo"]["benchmarks"][GREEDY]["n_seeds"] == 1
    assert one.runs["icpo_rs"].instances == {"0": "icpo_rs_s0"} and one.runs["base"].instances == {
        "-": "base"
    }


def test_curves_png_has_bands_only_for_several_seeds(project):
    from icpo_core.report.curves import plot_curves

    m = Path("metrics")
    runs = {
        "grpo": ("GRPO", [m / f"steps_grpo_s{s}.jsonl" for s in (0, 1, 2)]),
        "icpo_rs": ("ICPO†", [m / "steps_icpo_rs_s0.jsonl"]),
        "icpo_no_errs": ("ICPO − ERRS", [m / "steps_icpo_no_errs_s0.jsonl"]),
    }
    plotted = plot_curves(runs, project / "c.png")
    # grpo: a band in each of the 4 panels it logs (no expert-region reward); one seed: lines only; none: absent
    assert plotted == {
        "grpo": {"seeds": 3, "steps": 4, "bands": 4},
        "icpo_rs": {"seeds": 1, "steps": 4, "bands": 0},
    }
    assert (project / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_curve_band_is_mean_and_min_max_over_seeds(tmp_path):
    paths_ = []
    for seed, offset in enumerate((0.0, 0.2, 0.4)):
        p = tmp_path / f"steps_s{seed}.jsonl"
        rows = [{"step": s, "reward/on_policy": s + offset, "actor/kl": float("nan")} for s in (1, 2)]
        if seed == 2:
            rows.append({"step": 3, "reward/on_policy": 9.0})
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths_.append(p)
    data = plot_data([read_steps(p) for p in paths_])
    assert [r["step"] for r in data] == [1, 2, 3]
    assert data[0]["reward/on_policy"] == pytest.approx(1.2)
    assert (data[0]["reward/on_policy/min"], data[0]["reward/on_policy/max"]) == (1.0, pytest.approx(1.4))
    assert data[2]["n_seeds"] == 1 and data[2]["reward/on_policy"] == 9.0
    assert data[0]["actor/kl"] is None  # NaN on every seed: no value, not NaN in the JSON


def test_single_seed_layout_without_samples_shows_means_without_ci(tmp_path, monkeypatch):
    """The old layout (metrics/bench_<run>.json, no per-sample verdicts): a mean, "(no CI)", no comparison."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    for run, acc in (("grpo", 0.2), ("icpo", 0.4)):
        bench = {"benchmarks": {GREEDY: {"avg_at_n": acc, "n": 1, "n_problems": 32}}}
        (tmp_path / "metrics" / f"bench_{run}.json").write_text(json.dumps(bench))
    params = make_params(bench={"benchmarks": [GREEDY]}, seeds=[0])
    assert run_report(params, runs="base,grpo,icpo") == 0
    md = (tmp_path / "reports/report.md").read_text()
    assert row(md, "icpo")[3] == "40.0 (no CI)" and row(md, "grpo")[2] == "1"
    assert row(md, "base")[3] == "n/a"
    study = json.loads((tmp_path / "reports/study.json").read_text())
    assert study["runs"]["icpo"]["instances"] == {"0": "icpo_s0"}
    assert study["comparisons"]["icpo-grpo"]["benchmarks"][GREEDY] is None


@pytest.mark.slow  # a fresh SQLite tracking store costs ~20 s of migrations on 2 cores
def test_study_logged_to_mlflow_and_compare_prints_it(project, monkeypatch, capsys):
    from icpo_core.report.mlflow_runs import log_study, study_metrics
    from icpo_core.stages import compare

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project}/mlflow.db")
    params = study_params()
    assert run_report(params) == 0
    study = json.loads((project / "reports/study.json").read_text())
    flat = study_metrics(study)
    assert flat["study/icpo/average/mean"] == pytest.approx(study["runs"]["icpo"]["average"]["mean"])
    assert flat["diff/icpo-grpo/average/p"] == study["comparisons"]["icpo-grpo"]["average"]["p"]
    assert not any(k.startswith("study/icpo_no_errs/") and k.endswith("/mean") for k in flat)  # n/a: left out
    files = [str(project / "reports" / f) for f in ("report.md", "study.json")]
    assert log_study(params, study, files) is not None
    # the saved "study" view: what the UI opens at the URL the report prints (runs grouped by variant)
    from mlflow.tracking import MlflowClient

    from icpo_core.report.mlflow_runs import STUDY_VIEW_TAG

    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    exp = client.get_experiment_by_name(params.tracking.experiment)
    view = json.loads(exp.tags[STUDY_VIEW_TAG])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "icpo.variant"}]
    for tags in ({"icpo.variant": "grpo"}, {"icpo.variant": "base"}, {"icpo.kind": "study"}):
        client.create_run(
            exp.experiment_id, tags=tags
        )  # a GRPO run, the base run, a study parent (no variant)
    shown = client.search_runs([exp.experiment_id], filter_string=view["searchFilter"])
    assert sorted(r.data.tags["icpo.variant"] for r in shown) == ["base", "grpo"]  # no report, no parent
    capsys.readouterr()
    ns = argparse.Namespace(
        params_obj=params, experiment=None, filter=[], benchmarks=None, per_run=False, json_out="cmp.json"
    )
    assert compare.run(ns) == 0
    out = capsys.readouterr().out
    md = (project / "reports/report.md").read_text()
    assert row(out, "icpo") == row(md, "icpo") and "(`icpo` − `grpo`) | Avg. |" in out
    assert json.loads(Path("cmp.json").read_text())["comparisons"] == study["comparisons"]
