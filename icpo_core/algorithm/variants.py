"""Method variants as named entries, looked up by both engines (in the style of verl's ``register_policy_loss``).

A run is an :class:`~icpo_core.config.AlgorithmParams` whose ``off_policy`` names an :class:`OffPolicySource`
and whose ``reward`` names a :class:`RewardVariant`. An entry says everything an engine needs to know about the
variant: how many on-policy rows to roll out, how many off-policy rows there are and whether the policy generates
them, how an off-policy row is prompted (:meth:`OffPolicySource.draw_demos`), how the rows form the trained
group (its ``placement``) and which checks a run must pass. The engines only move data; a new arm is one
:func:`register_off_policy` / :func:`register_reward` entry plus its ``runs:`` block in params.yaml.

Built-in off-policy sources (``n_off: 0`` is always ``none``, GRPO):

============== =========================================================================================
``none``       GRPO: on-policy groups only.
``ief``        ICPO: N_off rows sampled from the policy with k demos in front of q ([D; q], section 3.1),
               ERRS, replacement, optional annealed bonus.
``ief_no_demos`` The same extra rows, ERRS and bonus, sampled from the plain prompt q: the control that
               isolates what the demos add (also the released code's behaviour: its demos never reach vLLM).
``expert_trace`` LUFFY: the row's reference solution (``target``) as N_off off-policy rows appended to
               ``n_on - n_off`` rollouts; more information than ICPO uses.
============== =========================================================================================

Built-in rewards: ``verifier`` (math-verify, binary), and the controls ``shuffled``, ``random``, ``format``
(:mod:`.control_rewards`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from icpo_core.algorithm import control_rewards as cr
from icpo_core.algorithm.demos import Demo, DemoPool
from icpo_core.algorithm.groups import GroupPlan, appending_group, replacing_group

if TYPE_CHECKING:
    from icpo_core.config import AlgorithmParams

Placement = Literal["replace", "append"]
GroupPlanner = Callable[
    [Sequence[float], Sequence[float], "AlgorithmParams", float, np.random.Generator], GroupPlan
]
RewardFn = Callable[[Sequence[float], Sequence[str], np.random.Generator, "AlgorithmParams"], list[float]]
Check = Callable[["AlgorithmParams"], "str | None"]


@dataclass(frozen=True)
class OffPolicySource:
    """Where a run's off-policy rows come from and how they are trained.

    ``generated``: the policy samples them (one extra rollout per row) rather than the data supplying them.
    ``with_demos``: their generation prompt carries ``k_demos`` demos ([D; q]); otherwise it is the plain q.
    ``placement``: ``replace`` (ERRS, each accepted row replaces an on-policy row, the group keeps N_on rows)
    or ``append`` (the rows fill the last ``n_off`` slots after ``n_on - n_off`` rollouts). Off-policy tokens
    are always trained as answers to q alone, with f(p) = p / (p + gamma) shaping and no ratio (the loss).
    ``extra_information``: the source sees something the policy does not (an external solution), so a run
    with it is an upper reference, not a peer of ICPO. ``method``: the ``icpo.method`` tag of its runs.
    """

    name: str
    method: str
    label: str
    summary: str
    generated: bool
    with_demos: bool
    placement: Placement
    extra_information: bool = False
    check: Check | None = None

    def rollouts_per_prompt(self, algo: AlgorithmParams) -> int:
        """On-policy rows generated per prompt."""
        return algo.n_on - algo.n_off if self.placement == "append" else algo.n_on

    def generated_off_per_prompt(self, algo: AlgorithmParams) -> int:
        """Off-policy rows the policy generates per prompt (0 when the data supplies them)."""
        return algo.n_off if self.generated else 0

    def supplied_off_per_prompt(self, algo: AlgorithmParams) -> int:
        """Off-policy rows the data supplies per prompt (LUFFY's expert traces)."""
        return 0 if self.generated else algo.n_off

    def draw_demos(
        self,
        algo: AlgorithmParams,
        pool: DemoPool | None,
        rng: np.random.Generator,
        question: str | None,
    ) -> list[Demo] | None:
        """The demos of one generated off-policy row's prompt, never the row's own question; None: the row is
        sampled from the plain prompt q. Draws from ``rng`` only when the source uses demos."""
        if not self.with_demos:
            return None
        if pool is None:
            raise ValueError(f"off_policy {self.name!r} needs the demo cache (data/demos.parquet)")
        return pool.sample(algo.k_demos, rng, exclude_problem=question)

    def plan_group(
        self,
        on_rewards: Sequence[float],
        off_rewards: Sequence[float],
        algo: AlgorithmParams,
        bonus: float,
        rng: np.random.Generator,
    ) -> GroupPlan:
        """One prompt's trained group under this source's placement (:mod:`.groups`)."""
        planner: GroupPlanner = appending_group if self.placement == "append" else replacing_group
        return planner(on_rewards, off_rewards, algo, bonus, rng)


@dataclass(frozen=True)
class RewardVariant:
    """The training reward of a run: ``fn(verifier, responses, rng, algo)`` over a step's trajectories in the
    engines' common order (:mod:`.control_rewards`). ``control``: it ignores correctness (the engines then also
    log the verifier's on-policy reward); ``needs_text``: it reads the decoded responses."""

    name: str
    label: str
    summary: str
    fn: RewardFn
    control: bool
    needs_text: bool = False


OFF_POLICY: dict[str, OffPolicySource] = {}
REWARDS: dict[str, RewardVariant] = {}


def register_off_policy(source: OffPolicySource) -> OffPolicySource:
    """Add ``source`` under its name (``algorithm.off_policy``); a name is registered once."""
    if source.name in OFF_POLICY:
        raise ValueError(f"off-policy source {source.name!r} is already registered")
    OFF_POLICY[source.name] = source
    return source


def register_reward(variant: RewardVariant) -> RewardVariant:
    """Add ``variant`` under its name (``algorithm.reward``); a name is registered once."""
    if variant.name in REWARDS:
        raise ValueError(f"reward {variant.name!r} is already registered")
    REWARDS[variant.name] = variant
    return variant


def off_policy_source(algo: AlgorithmParams) -> OffPolicySource:
    """The run's source: ``none`` when ``n_off == 0`` (GRPO), else the entry ``algo.off_policy`` names."""
    return OFF_POLICY["none"] if algo.n_off == 0 else OFF_POLICY[algo.off_policy]


def reward_variant(algo: AlgorithmParams) -> RewardVariant:
    return REWARDS[algo.reward]


def method_name(algo: AlgorithmParams) -> str:
    """The ``icpo.method`` tag: the source's method, plus ``_<reward>_reward`` for a reward control."""
    base = off_policy_source(algo).method
    return base if not reward_variant(algo).control else f"{base}_{algo.reward}_reward"


def method_label(algo: AlgorithmParams) -> str:
    """A display label: the source's label, plus the reward's for a control."""
    label = off_policy_source(algo).label
    r = reward_variant(algo)
    return label if not r.control else f"{label}, {r.label}"


def check(algo: AlgorithmParams) -> str | None:
    """The first reason ``algo`` is not a valid run under its entries, or None."""
    if algo.off_policy not in OFF_POLICY:
        return f"off_policy {algo.off_policy!r} is not registered: one of {', '.join(OFF_POLICY)}"
    if algo.reward not in REWARDS:
        return f"reward {algo.reward!r} is not registered: one of {', '.join(REWARDS)}"
    if algo.off_policy == "none" and algo.n_off:
        return f"off_policy 'none' (GRPO) needs n_off: 0, got {algo.n_off}"
    source = off_policy_source(algo)
    return source.check(algo) if source.check else None


def _check_expert_trace(algo: AlgorithmParams) -> str | None:
    if not 1 <= algo.n_off < algo.n_on:
        return (
            f"off_policy: expert_trace needs 1 <= n_off < n_on (n_off expert traces and n_on - n_off on-policy "
            f"rollouts per group; LUFFY: n_off 1, n_on 8), got n_off {algo.n_off}, n_on {algo.n_on}"
        )
    if algo.errs or algo.reward_shaping:
        return (
            "off_policy: expert_trace (LUFFY) has no ERRS and no expert bonus: set errs: false and "
            "reward_shaping: false for this run"
        )
    return None


register_off_policy(
    OffPolicySource(
        name="none",
        method="grpo",
        label="GRPO",
        summary="on-policy groups only",
        generated=False,
        with_demos=False,
        placement="replace",
    )
)
register_off_policy(
    OffPolicySource(
        name="ief",
        method="icpo",
        label="ICPO",
        summary="N_off extra rollouts from [demos; q], ERRS, replacement (paper section 3)",
        generated=True,
        with_demos=True,
        placement="replace",
    )
)
register_off_policy(
    OffPolicySource(
        name="ief_no_demos",
        method="icpo_no_demos",
        label="ICPO without demos",
        summary="ICPO's N_off extra rollouts and ERRS from the plain prompt q: what the demos add",
        generated=True,
        with_demos=False,
        placement="replace",
    )
)
register_off_policy(
    OffPolicySource(
        name="expert_trace",
        method="luffy",
        label="LUFFY (trains on each problem's reference solution)",
        summary="n_on - n_off rollouts + the row's reference solution as n_off off-policy rows (arXiv 2504.14945)",
        generated=False,
        with_demos=False,
        placement="append",
        extra_information=True,
        check=_check_expert_trace,
    )
)
register_reward(
    RewardVariant("verifier", "verifier reward", "math-verify, binary", cr.verifier_rewards, control=False)
)
register_reward(
    RewardVariant(
        "shuffled",
        "shuffled reward",
        "the step's verifier rewards permuted across its trajectories (same sparsity, no link to correctness)",
        cr.shuffled_rewards,
        control=True,
    )
)
register_reward(
    RewardVariant(
        "random",
        "random reward",
        "a coin flip per trajectory (p = random_reward_p)",
        cr.random_rewards,
        control=True,
    )
)
register_reward(
    RewardVariant(
        "format",
        "format reward",
        "1 for a response with a \\boxed{} answer",
        cr.format_rewards,
        control=True,
        needs_text=True,
    )
)


def training_rewards(
    algo: AlgorithmParams, verifier: Sequence[float], responses: Sequence[str], rng: np.random.Generator
) -> list[float]:
    """The step's training rewards under ``algo.reward`` (see :class:`RewardVariant`)."""
    if len(verifier) != len(responses):
        raise ValueError(f"{len(verifier)} rewards for {len(responses)} responses")
    return reward_variant(algo).fn(verifier, responses, rng, algo)
