"""The paper's published numbers (arXiv 2510.26519, Qwen3-8B) and what of them a study here can be compared with.

The paper's tables report NuminaMath, R1-Math Hard, R1-Math Easy, Minerva, GSM8K and MATH. Its main table heads one
column "MATH"; the ablation table heads the same numbers "Mnrv." (Minerva, beside R1-M Hard), and a Qwen3-8B at
38-44 % fits Minerva, not MATH: we read that column as Minerva, so MATH has no published number in our sources.
R1-Math Hard / Easy have no public data (docs/method.md, "The paper's benchmarks"), so only NuminaMath, Minerva and
GSM8K are rows both a study here and the paper report.

The paper disagrees with itself on GRPO's average: 62.37 in the main table, 63.76 in the ablation table. 63.76 is
the mean of the five numbers of GRPO's own row (ICPO's and ICPO-dagger's averages are the means of their rows), so
a comparison with the paper uses the per-benchmark rows, and where it quotes an average, 63.76.
"""

from __future__ import annotations

PAPER = "arXiv 2510.26519"
# accuracy % per run of params.yaml and benchmark of the registry (the paper's main table, Qwen3-8B)
QWEN3_8B: dict[str, dict[str, float]] = {
    "grpo": {"numinamath": 91.00, "minerva": 38.54, "gsm8k": 83.75},
    "icpo": {"numinamath": 92.00, "minerva": 43.65, "gsm8k": 86.95},
    "icpo_rs": {"numinamath": 92.00, "minerva": 40.94, "gsm8k": 92.00},
}
# the rows the paper reports that have no public data here
NOT_PUBLIC = ("R1-Math Hard", "R1-Math Easy")
GRPO_AVERAGE_MAIN_TABLE = 62.37
GRPO_AVERAGE_ABLATION_TABLE = 63.76  # = the mean of GRPO's row (91.00, 54.79, 38.54, 83.75, 50.74)
PAPER_TABLES = {"paper_qwen3_8b": QWEN3_8B}  # profile -> the paper's numbers for its model


def shared_rows(profile: str) -> list[str]:
    """The benchmarks (registry names) a study under ``profile`` and the paper's table both report."""
    table = PAPER_TABLES.get(profile, QWEN3_8B)
    return sorted({b for row in table.values() for b in row})
