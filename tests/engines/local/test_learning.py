"""The learning regression test: the embedded default ICPO run learns on the REAL offline model.

Every stage is the real one (``icpo base-model / prepare-* / train / merge / bench`` through ``icpo_core.cli``,
in this process), with params.yaml as it is: the embedded default (SmolLM2-135M from the GGUF package, the
system-turn regime, 8 steps x 2 prompts x (8 on-policy + 4 IEF rollouts), vLLM rollouts), the study's
``train@icpo-0``. Only the bench is cut to held-out level 0 (200 problems, greedy) to save a minute, and the
held-out count is 200 per level where the study now uses 150 (``OVERRIDES``).

What it asserts, and what breaks it:

- **Learning**: the merged model's held-out level-0 greedy accuracy rises by ``GAIN_MIN`` over the base
  model's. Breaks if rewards, advantages, the loss, the optimizer step, the vLLM weight push (later steps then
  sample the base model) or merge stop working.
- **The IEF mechanism**: demo-bearing prompts reach more reward than the plain ones (``IEF_LIFT_MIN``), ERRS
  accepts rows, and accepted rows carry loss tokens (``actor/ief_token_frac``). Breaks if demos stop reaching
  generation, if ERRS rejects everything, or if accepted rows are dropped or masked out of the loss.

What it does not assert: that ICPO beats GRPO. In this regime it does not, measurably (README: ICPO - GRPO
+2 [-12, +15] over 3 seeds). A contrast that isolates IEF needs the strict regime, where GRPO has no signal;
there, runs that fit the time box (8-16 steps) accept only 2-5 IEF rows, and neither held-out greedy accuracy
(0 -> 1 / 3 / 12 / 4 points at steps 4 / 8 / 12 / 16 of one run) nor the held-out likelihood of the reference
solutions (+0.55, -0.37, -0.88 nats/token at seeds 0 / 1 / 2) moved in a stable direction (docs/benchmarks.md,
"Learning test").

Margins, from the measurements in docs/benchmarks.md "Learning test". This run (seed 0, deterministic on one
machine; four printed repeats gave the same numbers to the last digit, a fifth passed in `make test`): base 16.0 %,
ICPO 49.5 % on 200 problems (+33.5 points); mean IEF reward 0.14 vs on-policy 0.02; 9 IEF rows accepted. On a
second machine, with vLLM seeded per call: base 13.5 %, ICPO 45.5 %, IEF reward 0.19 vs 0.04, 12 rows accepted
(`make test`, 346 s). The study's three ICPO seeds: level 0 at 54 [47, 60] % against the base model's 16 [11, 21]. ``GAIN_MIN`` is under half
the measured gain, so a pass is not luck and a run that does not learn (the base model's 16 +- 5 points) cannot
pass; ``IEF_LIFT_MIN`` is under half the measured lift (0.12), because 64 IEF rollouts leave about +-0.04 of
sampling noise on a machine whose kernels draw differently. Print the numbers with ``pytest
tests/engines/local/test_learning.py -s``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from icpo_core import steplog
from icpo_core.config import deep_merge

REPO_PARAMS = Path(__file__).resolve().parents[3] / "params.yaml"
SEED = 0
GAIN_MIN = 0.15  # icpo - base, held-out level-0 greedy accuracy (200 problems)
IEF_LIFT_MIN = 0.05  # mean IEF reward (1-shot prompts) - mean on-policy reward (0-shot), over the run's steps

# 200 held-out problems per level (the study uses 150): the bench's resolution (+-7 points) and the data the
# margins were measured on (the synthetic splits are cut from one stream, eval first, so the count moves the
# training and demo problems too)
OVERRIDES = {"bench": {"benchmarks": ["synthetic_l0"]}, "data": {"synthetic": {"eval_per_level": 200}}}


def _icpo(*argv: str) -> None:
    from icpo_core.cli import main

    assert main(list(argv)) == 0, argv


def _accuracy(instance: str) -> tuple[float, int]:
    level = json.loads(Path(f"metrics/bench_{instance}.json").read_text())["benchmarks"]["synthetic_l0"]
    return level["avg_at_n"], level["n_problems"]


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None]  # the step log writes an undefined metric as null
    return sum(vals) / len(vals)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_embedded_icpo_run_learns_through_its_ief_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    raw = deep_merge(yaml.safe_load(REPO_PARAMS.read_text()), OVERRIDES)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    t0 = time.perf_counter()
    for stage in ("base-model", "prepare-demos", "prepare-train"):
        _icpo(stage)
    _icpo("bench", "--run", "base", "--no-mlflow")
    _icpo("train", "--run", "icpo", "--seed", str(SEED))
    _icpo("merge", "--run", "icpo", "--seed", str(SEED))
    _icpo("bench", "--run", "icpo", "--seed", str(SEED), "--no-mlflow")
    (base, n), (icpo, _) = _accuracy("base"), _accuracy(f"icpo_s{SEED}")
    steps = steplog.read_steps(f"metrics/steps_icpo_s{SEED}.jsonl")
    numbers = {
        "base": base,
        "icpo": icpo,
        "n_problems": n,
        "ief_reward": _mean(steps, "icpo/ief_reward"),
        "on_policy_reward": _mean(steps, "reward/on_policy"),
        "ief_accepted": sum(s["icpo/ief_accepted"] for s in steps),
        "ief_token_frac": _mean(steps, "actor/ief_token_frac"),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print("LEARNING_TEST " + json.dumps(numbers))
    assert n >= 200, numbers
    # the mechanism: a demo lifts the reward, ERRS keeps rows, and they reach the loss
    assert numbers["ief_reward"] - numbers["on_policy_reward"] >= IEF_LIFT_MIN, numbers
    assert numbers["ief_accepted"] > 0 and numbers["ief_token_frac"] > 0, numbers
    # the effect
    assert icpo - base >= GAIN_MIN, numbers
