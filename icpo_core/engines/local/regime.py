"""The regime a study runs in, measured: how much learning signal the base model's on-policy groups carry, and
how much more its demo-conditioned (IEF) groups carry (docs/method.md, "The regime").

ICPO claims to rescue prompts whose on-policy group finds no reward: its IEF rollouts, sampled from the same
policy with solved demos in the prompt, find some. A miniature can only test that where the gap exists, so the
study measures it on the base model, before training, with the prompts training uses:

- 0-shot: the plain training prompt, token for token as the local trainer builds it
  (:func:`icpo_core.engines.local.data.load_prompts`), ``k`` samples;
- with demos: ``k`` IEF prompts per problem, each with its own ``k_demos`` demos drawn from the demo cache (never
  the problem itself), built by :func:`icpo_core.algorithm.build_ief_prompt` in the run's ``demo_format``, one
  sample each -- as the trainer draws them for its ``n_off`` rollouts.

Both are graded by the project's grader (:class:`icpo_core.grading.Grader`). Per condition: the share of
problems whose ``k`` rewards are neither all right nor all wrong (``groups_with_signal``, the groups that give
GRPO a non-zero advantage) with a 95 % Wilson interval, and the mean reward with a 95 % bootstrap interval over
problems. No orchestration here: ``icpo regime`` (:mod:`icpo_core.stages.regime`) is the stage around it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from icpo_core.algorithm.demos import DemoFormat, DemoPool, build_ief_prompt
from icpo_core.engines.local.data import PromptRow, chat_ids, load_prompts
from icpo_core.engines.local.rollout import RolloutEngine

log = logging.getLogger(__name__)

Z95 = 1.959963984540054
BOOTSTRAP = 2000  # resamples of the problems for the mean reward's interval


@dataclass(frozen=True)
class RegimeSettings:
    """What one measurement samples: ``k`` per problem, at the rollout's temperature / top_p / max tokens, and
    the IEF prompt of a run (``k_demos`` demos in ``demo_format``)."""

    k: int = 8
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    k_demos: int = 1
    demo_format: DemoFormat = "chat_turns"
    seed: int = 0
    chunk: int | None = None  # prompts per generate call (None: one call per condition, as vLLM takes them)


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial share (95 % by default); (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact at the ends (no rounding residue)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return lo, hi


def bootstrap_ci(per_problem: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``per_problem`` values, resampling problems (seeded)."""
    if len(per_problem) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng([seed, 0x5E61])
    idx = rng.integers(0, len(per_problem), size=(resamples, len(per_problem)))
    means = per_problem[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def group_summary(rewards: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The regime numbers of a (problems, k) reward matrix (rewards in {0, 1})."""
    problems, k = rewards.shape
    correct = (rewards > 0).sum(axis=1)
    signal = int(((correct > 0) & (correct < k)).sum())
    lo, hi = wilson(signal, problems)
    mlo, mhi = bootstrap_ci(rewards.mean(axis=1), seed)
    return {
        "groups_with_signal": signal / problems if problems else 0.0,
        "ci": [lo, hi],
        "mean_reward": float(rewards.mean()) if rewards.size else 0.0,
        "mean_reward_ci": [mlo, mhi],
        "any_correct": float((correct > 0).mean()) if problems else 0.0,
        "all_correct": float((correct == k).mean()) if problems else 0.0,
    }


def pick_problems(rows: Sequence[object], n: int, seed: int) -> list[int]:
    """A seeded sample of ``n`` row indices (all rows, in order, when there are fewer), sorted."""
    if n >= len(rows):
        return list(range(len(rows)))
    return sorted(int(i) for i in np.random.default_rng([seed, 0x4E61]).choice(len(rows), n, replace=False))


def ief_prompts(
    rows: Sequence[PromptRow], pool: DemoPool, tokenizer: Any, s: RegimeSettings
) -> list[list[list[int]]]:
    """Per problem, ``k`` IEF prompts' token ids, each with its own demos: the local trainer's
    ``generation_prompts`` for its IEF rows (chat template, or the raw ``released`` string without special
    tokens)."""
    rng = np.random.default_rng([s.seed, 0x1EF])
    out = []
    for row in rows:
        ids = []
        for _ in range(s.k):
            demos = pool.sample(s.k_demos, rng, exclude_problem=row.question)
            prompt = build_ief_prompt(row.messages, demos, s.demo_format, row.suffix, question=row.question)
            if isinstance(prompt, str):
                ids.append(list(tokenizer(prompt, add_special_tokens=False)["input_ids"]))
            else:
                ids.append(chat_ids(tokenizer, prompt))
        out.append(ids)
    return out


def _call_seed(seed: int, condition: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, condition, chunk, 0x5EED]).generate_state(1, np.uint32)[0])


def _generate_groups(
    engine: RolloutEngine, groups: Sequence[Sequence[Sequence[int]]], s: RegimeSettings, condition: int
) -> tuple[list[list[str]], int]:
    """Texts of one sample per prompt of every group (``groups[p]`` holds problem p's prompts) and the generated
    tokens. The prompts go to the engine as a trainer's step sends them: one response per prompt, the group's
    copies side by side, in calls of ``s.chunk`` prompts (all at once when None), each call seeded."""
    flat = [list(ids) for prompts in groups for ids in prompts]
    step = s.chunk or max(1, len(flat))
    texts: list[str] = []
    tokens = 0
    for c, start in enumerate(range(0, len(flat), step)):
        out = engine.generate(
            flat[start : start + step],
            max_new_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=_call_seed(s.seed, condition, c),
        )
        texts.extend(out.texts)
        tokens += int(sum(out.lengths))
    grouped, i = [], 0
    for prompts in groups:
        grouped.append(texts[i : i + len(prompts)])
        i += len(prompts)
    return grouped, tokens


def _grade(grade: Callable[[list[str], list[str]], list[float]], texts: list[list[str]], golds: list[str]):
    flat = [t for group in texts for t in group]
    rewards = grade(flat, [g for g, group in zip(golds, texts, strict=True) for _ in group])
    return np.asarray(rewards, dtype=np.float64).reshape(len(texts), -1)


def measure_condition(
    engine: RolloutEngine,
    grade: Callable[[list[str], list[str]], list[float]],
    groups: Sequence[Sequence[Sequence[int]]],
    golds: Sequence[str],
    s: RegimeSettings,
    condition: int = 0,
) -> tuple[dict[str, Any], np.ndarray]:
    """One condition: sample ``groups`` (per problem, its prompts' token ids), grade, summarise.

    Returns (:func:`group_summary` plus ``boxed``, ``tokens``, ``gen_s``; the (problems, k) rewards)."""
    t0 = time.perf_counter()
    texts, tokens = _generate_groups(engine, groups, s, condition)
    gen_s = time.perf_counter() - t0
    rewards = _grade(grade, texts, list(golds))
    flat = [t for g in texts for t in g]
    summary = {
        **group_summary(rewards, s.seed),
        "boxed": float(np.mean(["\\boxed{" in t for t in flat])) if flat else 0.0,
        "tokens": tokens,
        "gen_s": round(gen_s, 1),
    }
    return summary, rewards


def rescued(zero_shot: np.ndarray, with_demos: np.ndarray) -> dict[str, Any]:
    """The share of problems whose 0-shot group is all wrong and whose demo group finds a reward (the prompts
    ICPO claims to rescue), with its Wilson interval."""
    n = int((~(zero_shot > 0).any(axis=1) & (with_demos > 0).any(axis=1)).sum())
    total = zero_shot.shape[0]
    return {"rescued": n / total if total else 0.0, "rescued_ci": list(wilson(n, total))}


def measure(
    engine: RolloutEngine,
    tokenizer: Any,
    grade: Callable[[list[str], list[str]], list[float]],
    rows: Sequence[PromptRow],
    pool: DemoPool,
    s: RegimeSettings,
) -> dict[str, Any]:
    """Sample, grade and summarise both conditions for ``rows`` (the problems measured): ``zero_shot`` and
    ``with_demos`` (:func:`measure_condition`'s summaries) and :func:`rescued`."""
    golds = [r.gold for r in rows]
    plain = [[list(r.prompt_ids)] * s.k for r in rows]
    zero, zero_rewards = measure_condition(engine, grade, plain, golds, s, condition=0)
    ief = ief_prompts(rows, pool, tokenizer, s)
    demos, demo_rewards = measure_condition(engine, grade, ief, golds, s, condition=1)
    return {"zero_shot": zero, "with_demos": demos, **rescued(zero_rewards, demo_rewards)}


def load_rows(
    train_parquet: str | Path, tokenizer: Any, max_prompt_length: int, suffix: str
) -> list[PromptRow]:
    """The training prompts as the local trainer loads them."""
    return load_prompts(train_parquet, tokenizer, max_prompt_length, suffix)


def levels_of(train_parquet: str | Path, rows: Sequence[PromptRow]) -> list[int]:
    """The synthetic levels (``extra_info.level``) of ``rows``, sorted; [] for data without levels."""
    import pyarrow.parquet as pq

    info = pq.read_table(train_parquet, columns=["extra_info"]).column("extra_info").to_pylist()
    level = {str(x.get("question")): x.get("level") for x in info if isinstance(x, dict)}
    found = {level.get(r.question) for r in rows}
    return sorted(int(v) for v in found if isinstance(v, int) and v >= 0)
