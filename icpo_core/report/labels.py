"""The one place a run's display label comes from: derived from its algorithm params, never from its name."""

from __future__ import annotations

from typing import Any

from icpo_core.algorithm import off_policy_source, reward_variant

BASE_LABEL = "Base model"
# What a source with extra information (LUFFY's reference solutions) is, said wherever it appears
UPPER_REFERENCE = "more information than ICPO uses: an upper reference, not a peer"
LUFFY_INFORMATION = "trains on each problem's reference solution (more information than ICPO uses)"


def run_label(params: Any, run: str) -> str:
    """The paper's name for ``run``, read from ``params.run_algorithm(run)`` through the method variants
    (``icpo_core.algorithm.variants``): the off-policy source's label (GRPO, ICPO, ICPO without demos, LUFFY),
    ICPO's own ablations (RS as ICPO†, without ERRS, another demo format, the released code's behaviours), the
    rollouts per prompt where they differ from ``algorithm.n_on``, and a control reward's label. A source that
    sees more than the policy (LUFFY's reference solutions) is labelled as the upper reference it is. ``base``
    is the untrained model; a name ``params`` does not define is shown as it is."""
    if run == "base":
        return BASE_LABEL
    if params is None or run not in params.runs:
        return run
    a = params.run_algorithm(run)
    source, reward = off_policy_source(a), reward_variant(a)
    name = source.label
    if a.released_constant_bonus or a.released_entropy_bonus > 0 or a.released_loss_agg:
        name = f"{'GRPO' if a.n_off == 0 else 'ICPO'} (released code)"
    elif source.generated:
        name = name.replace("ICPO", "ICPO†", 1) if a.reward_shaping else name
        name += "" if a.errs else " − ERRS"
        name += "" if a.demo_format == "chat_turns" or not source.with_demos else f" ({a.demo_format} demos)"
    if source.extra_information:
        name += f", {UPPER_REFERENCE}"
    if a.n_on != params.algorithm.n_on:
        name += f", {a.n_on} rollouts"
    return name if not reward.control else f"{name} ({reward.label})"
