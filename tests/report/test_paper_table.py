"""Under a paper profile the report says where its numbers meet the paper's table, and which GRPO average a
comparison uses (the paper disagrees with itself); under another profile it says nothing of the kind."""

from __future__ import annotations

from icpo_core.report import paper
from icpo_core.report.markdown import paper_markdown, report_markdown
from icpo_core.report.study_data import Study


def _study(profile: str) -> Study:
    cell = {"mean": 90.0, "ci_low": 84.0, "ci_high": 95.0, "n_seeds": 1, "n_problems": 100}
    return Study.model_validate(
        {
            "profile": profile,
            "method": {"confidence": 0.95, "n_boot": 10, "n_perm": 10, "rng_seed": 0},
            "seeds": [0],
            "runs": {
                "grpo": {"label": "GRPO", "benchmarks": {"numinamath": cell, "math500": cell}},
                "icpo": {"label": "ICPO", "benchmarks": {"numinamath": cell, "math500": cell}},
            },
        }
    )


def test_a_paper_profiles_report_is_comparable_only_on_shared_rows():
    md = paper_markdown(_study("paper_qwen3_8b"))
    assert (
        "comparable with the paper's table (arXiv 2510.26519) only on the rows both report: GSM8K, Minerva, "
        in md
    )
    assert "NuminaMath" in md and "R1-Math Hard and R1-Math Easy have no public data" in md
    assert "62.37 main table, 63.76 ablation table" in md and "where it quotes an average, 63.76" in md
    assert "| NuminaMath | GRPO | `grpo` | 90 [84, 95] | 91.00 |" in md
    assert "| GSM8K | icpo_rs | `icpo_rs` | n/a (not in the study) | 92.00 |" in md
    full = report_markdown(_study("paper_qwen3_8b"), "now")
    assert "## Against the paper's table" in full
    # the 1.7B profile: the same caveat, no numbers (the paper's 1.7B table is not in our sources)
    assert "not in our sources" in paper_markdown(_study("paper_qwen3_1_7b"))
    assert paper_markdown(_study("embedded")) == ""
    assert "Against the paper" not in report_markdown(_study("embedded"), "now")


def test_the_papers_grpo_average_is_the_mean_of_its_own_row():
    row = [91.00, 54.79, 38.54, 83.75, 50.74]  # NuminaMath, R1-M Hard, Minerva, GSM8K, R1-M Easy
    assert round(sum(row) / len(row), 2) == paper.GRPO_AVERAGE_ABLATION_TABLE != paper.GRPO_AVERAGE_MAIN_TABLE
    assert paper.shared_rows("paper_qwen3_8b") == ["gsm8k", "minerva", "numinamath"]
