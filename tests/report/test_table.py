"""The per-run table, the run labels, the study's columns and the training curves, from fabricated files."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace

from tests_report_helpers import make_params

from icpo_core.algorithm.losses import effective_entropy_coeff
from icpo_core.config import DEFAULT_RUNS
from icpo_core.report.curves import plot_curves, read_steps
from icpo_core.report.labels import UPPER_REFERENCE, run_label
from icpo_core.report.markdown import run_table_markdown
from icpo_core.report.mlflow_runs import metrics_from_run, tag_filter
from icpo_core.report.run_table import build_table
from icpo_core.report.study_stats import build_study, comparison_pairs


def bench_json(values: dict[str, float], n: int = 1) -> dict:
    return {"benchmarks": {k: {"avg_at_n": v, "n": n} for k, v in values.items()}}


def test_best_per_column_is_bold_and_missing_is_na():
    t = build_table(
        [
            ("base", "Base model", bench_json({"x": 0.1, "y": 0.5}), ""),
            ("grpo", "GRPO", bench_json({"x": 0.3, "y": 0.2}), ""),
            ("icpo", "ICPO", bench_json({"x": 0.3}), ""),
            ("icpo_rs", "ICPO†", None, ""),
        ]
    )
    md = run_table_markdown(t)
    lines = md.splitlines()
    assert lines[0] == "| Method | Run | x (avg@1) | y (avg@1) | Avg. |"
    assert lines[2] == "| Base model | `base` | 10.00 | **50.00** | **30.00** |"
    assert lines[3] == "| GRPO | `grpo` | **30.00** | 20.00 | 25.00 |"
    assert lines[4] == "| ICPO | `icpo` | **30.00** | n/a | n/a |"  # ties are all bold; no average over a gap
    assert lines[5] == "| ICPO† | `icpo_rs` | n/a | n/a | n/a |"
    assert t.best() == {"x": 30.0, "y": 50.0, "average": 30.0}
    assert json.loads(json.dumps(t.to_dict()))["rows"][1]["values"] == {"x": 30.0, "y": 20.0}


def test_labels_follow_the_algorithm_params():
    p = make_params()
    labels = {r: run_label(p, r) for r in ["base", *p.runs]}
    assert labels == {
        "base": "Base model",
        "grpo": "GRPO",
        "icpo": "ICPO",
        "icpo_rs": "ICPO†",
        "icpo_no_errs": "ICPO − ERRS",
        "icpo_no_demos": "ICPO without demos",
        "grpo_compute_matched": "GRPO, 12 rollouts",
        "icpo_released": "ICPO (released code)",
        "grpo_released": "GRPO (released code)",
        "luffy": f"LUFFY (trains on each problem's reference solution), {UPPER_REFERENCE}",
        "grpo_shuffled_reward": "GRPO (shuffled reward)",
        "grpo_random_reward": "GRPO (random reward)",
        "grpo_format_reward": "GRPO (format reward)",
    }


def test_study_columns_follow_params_and_bad_files_show_na(tmp_path):
    """The study's columns: params' benchmarks first, then any other benchmark a metrics file holds; an
    unreadable metrics file reads as n/a, no crash (the single-seed layout: metrics/bench_<run>.json)."""
    p = make_params(seeds=[0])
    (tmp_path / "bench_icpo.json").write_text(json.dumps(bench_json({"extra": 0.9, "synthetic_l1": 0.5})))
    (tmp_path / "bench_grpo.json").write_text("{not json")
    study = build_study(p, ["base", "grpo", "icpo"], metrics_dir=tmp_path, bench_root=tmp_path, n_boot=50)
    assert study.columns == [*p.bench.benchmarks, "extra"]
    icpo = study.runs["icpo"]
    assert icpo.benchmarks["synthetic_l1"].mean == 50.0 and not icpo.benchmarks["synthetic_l1"].has_ci
    assert icpo.average.mean is None  # no average over a missing column
    assert all(c.mean is None for c in study.runs["grpo"].benchmarks.values())


def test_curves_png_of_a_single_seed_run(tmp_path):
    steps = tmp_path / "steps_icpo.jsonl"
    rows = [{"step": s, "reward/on_policy": 0.1 * s, "reward/expert_region": 0.5} for s in (1, 2, 3)]
    rows.append({"step": 2, "reward/on_policy": 0.9, "reward/expert_region": None})  # resumed step: last wins
    steps.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "rew')  # torn last line
    assert [r["reward/on_policy"] for r in read_steps(steps)] == [0.1, 0.9, 0.30000000000000004]
    out = tmp_path / "curves.png"
    plotted = plot_curves({"icpo": ("ICPO", [steps]), "grpo": ("GRPO", [tmp_path / "missing.jsonl"])}, out)
    assert plotted == {"icpo": {"seeds": 1, "steps": 3, "bands": 0}}
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width > height > 100


def test_mlflow_helpers():
    assert tag_filter(["icpo.method=icpo", "tags.`icpo.profile` = 'x'"]) == (
        "tags.`icpo.method` = 'icpo' and tags.`icpo.profile` = 'x'"
    )
    m = metrics_from_run(
        {"bench/a/avg_at_n": 0.5, "bench/a/n": 4.0, "bench/average/avg_at_n": 0.5, "loss": 1.0}
    )
    assert m == {"benchmarks": {"a": {"avg_at_n": 0.5, "n": 4}}}


def test_the_released_codes_icpo_is_compared_with_the_released_codes_grpo():
    """The released-code comparison keeps one loss-averaging rule: icpo_released - grpo_released (report.pairs),
    shown when both ran; grpo_released is GRPO with the released loss averaging and no entropy bonus."""
    p = make_params()
    g = p.run_algorithm("grpo_released")
    assert DEFAULT_RUNS["grpo_released"] == {"n_off": 0, "released_loss_agg": True} == p.runs["grpo_released"]
    assert g.n_off == 0 and g.released_loss_agg and effective_entropy_coeff(g) == 0.0
    both = SimpleNamespace(runs=["base", "grpo", "icpo_released", "grpo_released"], baseline="grpo")
    assert ("icpo_released", "grpo_released", "secondary") in comparison_pairs(p, both)
    one = SimpleNamespace(runs=["base", "grpo", "icpo_released"], baseline="grpo")
    assert all("grpo_released" not in pair for pair in comparison_pairs(p, one))
