"""The bench, grade, report and compare stages end to end through the CLI, in a throw-away project.

A tiny random model is benchmarked on tiny local synthetic levels (the real stage: registry, loader, hf
backend, grader, metrics JSON, MLflow); fabricated metrics feed the report; MLflow runs feed compare.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from icpo_core.cli import main

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from icpo_core.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("proj")
    write_tiny_model(root / "models/base")
    shutil.copytree(root / "models/base", root / "runs/icpo/merged")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["study"]["ablations"] = ["icpo_rs", "icpo_no_errs", "icpo_released"]  # the report lists them
    raw["study"]["runs"], raw["seeds"] = ["grpo", "icpo"], [0, 1, 2]  # what the fabricated metrics cover
    raw["study"]["primary"]["comparisons"] = [["icpo", "grpo"]]  # a primary comparison on those runs
    raw["bench"].update(
        backend="hf",  # the tiny model's head size is below what vLLM's CPU attention takes
        benchmarks=["synthetic_l0", "synthetic_l1", "synthetic_l3"],
        max_tokens=6,
        grade_workers=1,
        batch_size=8,
    )
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    for level in (0, 1, 3):
        path = root / f"data/eval/synthetic_l{level}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for k in range(3):
                f.write(
                    json.dumps(
                        {
                            "problem": f"Tom has {k} apples, gets {level} more.",
                            "answer": str(k + level),
                            "solution": "",
                        }
                    )
                    + "\n"
                )
    return root


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project}/mlflow/mlflow.db")
    (project / "mlflow").mkdir(exist_ok=True)
    return project


def test_bench_stage_end_to_end_and_resume(in_project, capsys):
    assert main(["bench", "--run", "base"]) == 0
    metrics = json.loads(Path("metrics/bench_base.json").read_text())
    assert list(metrics["benchmarks"]) == ["synthetic_l0", "synthetic_l1", "synthetic_l3"]
    for m in metrics["benchmarks"].values():
        assert m["n_problems"] == 3 and m["n"] == 1 and 0 <= m["avg_at_n"] <= 1 and "pass_at_1" in m
        assert m["sampling"]["temperature"] == 0.0 and m["sampling"]["max_tokens"] == 6
    assert metrics["timing"]["generate_s"] > 0
    rows = [json.loads(x) for x in Path("bench/base/samples.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and all(0 < r["tokens"] <= 6 for r in rows)
    assert {"problem", "gold", "sample", "response", "extracted", "correct", "tokens"} <= set(rows[0])

    state = Path("bench/base/state.json").read_text()
    assert main(["bench", "--run", "base"]) == 0  # finished: nothing regenerated
    again = json.loads(Path("metrics/bench_base.json").read_text())
    assert again["benchmarks"] == metrics["benchmarks"]
    assert again["timing"]["generate_s"] == metrics["timing"]["generate_s"]
    assert Path("bench/base/samples.jsonl").read_text().count("\n") == 9
    assert json.loads(Path("bench/base/state.json").read_text())["timing"] == json.loads(state)["timing"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("icpo-repro")
    [run] = client.search_runs([exp.experiment_id], "tags.`icpo.run` = 'base'")
    assert (
        run.data.metrics["bench/synthetic_l1/avg_at_n"] == metrics["benchmarks"]["synthetic_l1"]["avg_at_n"]
    )
    assert "bench/average/avg_at_n" in run.data.metrics


def test_bench_of_a_run_and_compare_from_mlflow(in_project, capsys):
    assert main(["bench", "--run", "icpo", "--benchmarks", "synthetic_l0", "--limit", "2"]) == 0
    m = json.loads(Path("metrics/bench_icpo.json").read_text())
    assert list(m["benchmarks"]) == ["synthetic_l0"] and m["benchmarks"]["synthetic_l0"]["n_problems"] == 2
    capsys.readouterr()
    assert (
        main(["compare", "--experiment", "icpo-repro", "--filter", "icpo.run=icpo", "--json", "cmp.json"])
        == 0
    )
    out = capsys.readouterr().out
    assert "| ICPO | `icpo` |" in out and "`base`" not in out
    table = json.loads(Path("cmp.json").read_text())
    assert table["columns"] == ["synthetic_l0"] and len(table["rows"]) == 1
    assert main(["compare", "--experiment", "no-such-exp"]) == 2
    assert main(["compare", "--filter", "icpo.run=nothing"]) == 2


def test_bench_input_errors_exit_2(in_project, capsys):
    assert main(["bench", "--run", "nope"]) == 2
    assert main(["bench", "--run", "grpo"]) == 2  # not merged yet
    assert "dvc repro merge@grpo" in capsys.readouterr().err
    assert main(["bench", "--run", "base", "--benchmarks", "no_such_bench"]) == 2


def test_grade_stage(in_project, capsys):
    preds = [
        {"benchmark": "math", "problem": "p1", "response": "\\boxed{\\frac{1}{2}}", "answer": "0.5"},
        {"benchmark": "math", "problem": "p1", "response": "\\boxed{0.4}", "answer": "0.5"},
        {"benchmark": "math", "problem": "p2", "response": "no idea", "answer": "3"},
        {"benchmark": "gsm8k", "response": "so the answer is 12.", "answer": "12"},  # registry fallbacks
        {"response": "$\\boxed{\\text{B}}$", "answer": "B"},
    ]
    Path("preds.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    assert main(["grade", "--predictions", "preds.jsonl", "--out", "out/m.json"]) == 0
    m = json.loads(Path("out/m.json").read_text())
    assert m["benchmarks"]["math"]["n_problems"] == 2
    assert m["benchmarks"]["math"]["avg_at_n"] == pytest.approx(0.25)
    assert m["benchmarks"]["math"]["accuracy"] == pytest.approx(1 / 3)
    assert m["benchmarks"]["gsm8k"]["accuracy"] == 1.0 and m["benchmarks"]["all"]["accuracy"] == 1.0
    assert m["overall"] == {"n_samples": 5, "correct": 3, "accuracy": 0.6}
    verdicts = [json.loads(x) for x in Path("out/m.verdicts.jsonl").read_text().splitlines()]
    assert [v["correct"] for v in verdicts] == [True, False, False, True, True]
    assert verdicts[2]["reason"] == "no_answer" and verdicts[3]["extracted"] == "12"

    assert main(["grade", "--predictions", "preds.jsonl", "--out", "strict.json", "--fallbacks", "none"]) == 0
    assert json.loads(Path("strict.json").read_text())["benchmarks"]["gsm8k"]["accuracy"] == 0.0
    Path("bad.jsonl").write_text('{"response": "x"}\n')
    assert main(["grade", "--predictions", "bad.jsonl", "--out", "x.json"]) == 2
    assert main(["grade", "--predictions", "preds.jsonl", "--out", "x.json", "--fallbacks", "guess"]) == 2


def test_report_stage_from_fabricated_metrics(in_project, capsys):
    """The real stage on fabricated per-instance samples: grpo and icpo at 3 seeds (icpo clearly better), one
    ablation at one seed, one ablation missing."""
    import random

    metrics, rng = Path("metrics"), random.Random(0)
    metrics.mkdir(exist_ok=True)
    for run, acc, seeds in (("grpo", 0.2, (0, 1, 2)), ("icpo", 0.6, (0, 1, 2)), ("icpo_rs", 0.5, (0,))):
        for seed in seeds:
            inst = f"{run}_s{seed}"
            rows = [
                {
                    "benchmark": f"synthetic_l{k}",
                    "problem_id": f"p{i}",
                    "sample": 0,
                    "correct": rng.random() < acc,
                }
                for k in (0, 1, 3)
                for i in range(60)
            ]
            Path(f"bench/{inst}").mkdir(parents=True, exist_ok=True)
            Path(f"bench/{inst}/samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            bench = {"benchmarks": {f"synthetic_l{k}": {"avg_at_n": acc, "n": 1} for k in (0, 1, 3)}}
            (metrics / f"bench_{inst}.json").write_text(json.dumps(bench))
            steps = [
                {"step": s, "reward/on_policy": acc * s / 4 + 0.01 * seed,
                 "reward/expert_region": None if run == "grpo" else 0.8}
                for s in (1, 2, 3, 4)
            ]  # fmt: skip
            (metrics / f"steps_{inst}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
            (metrics / f"train_{inst}.json").write_text(json.dumps({"steps": 4, "wall_time_s": 12.5}))
    assert main(["report"]) == 0
    md = Path("reports/report.md").read_text()
    study = json.loads(Path("reports/study.json").read_text())
    cmp = study["comparisons"]["icpo-grpo"]["average"]
    assert 30 < cmp["diff"] < 50 and cmp["ci_low"] > 0 and cmp["p"] < 0.01  # the fabricated 40-point gap
    assert (
        study["runs"]["icpo"]["average"]["n_seeds"] == 3
        and study["runs"]["icpo_rs"]["average"]["n_seeds"] == 1
    )
    assert study["runs"]["icpo_no_errs"]["missing"]  # not run: n/a, no crash
    assert "ICPO − GRPO" in md or "icpo − grpo" in md.lower() or "icpo-grpo" in md
    assert md.split("\n## ")[1].startswith("Primary comparison (preregistered)")  # the report leads with it
    assert "- Verdict, ICPO − GRPO (`icpo` − `grpo`): **supports**" in md
    assert study["primary"]["comparisons"][0]["verdict"] == "supports"
    table = json.loads(Path("reports/table.json").read_text())
    assert {"grpo", "icpo"} <= {r["run"] for r in table["rows"]}
    assert Path("reports/curves.png").read_bytes()[:4] == b"\x89PNG"
    plot_rows = json.loads(Path("reports/plots/steps_icpo.json").read_text())
    assert [r["step"] for r in plot_rows] == [1, 2, 3, 4]
    assert plot_rows[0]["reward/expert_region"] == pytest.approx(0.8)  # mean over the 3 seeds

    # dvc.yaml's top-level plots read the long-format files of every arm (DVC cannot read JSON lines)
    shutil.copy(REPO / "dvc.yaml", "dvc.yaml")
    subprocess.run(["dvc", "init", "--no-scm", "-q", "-f"], check=True)
    shutil.copytree(REPO / ".dvc" / "plots", ".dvc/plots")  # the template `arms` (colour by arm)
    shown = subprocess.run(["dvc", "plots", "show", "--json"], capture_output=True, text=True, check=False)
    plots = json.loads(shown.stdout)
    assert not [e for e in plots.get("errors", []) if "reports/plots" in e.get("source", "")]
    values = plots["data"]["reward_on_policy"][0]["content"]["data"]["values"]
    assert {"grpo", "icpo", "icpo_rs"} <= {v["arm"] for v in values}

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("icpo-repro")
    [run] = client.search_runs([exp.experiment_id], "tags.`icpo.run` = 'report'")
    names = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/curves.png", "report/table.json"} <= names
