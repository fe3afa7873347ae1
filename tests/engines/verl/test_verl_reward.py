"""The reward verl's reward loop calls: loaded the way verl loads it (pkg:// path from our overrides)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from omegaconf import OmegaConf

from icpo_core.engines.verl import overrides as ov


def test_reward_loads_through_verl_and_grades_in_threads():
    from verl.trainer.ppo.reward import get_custom_reward_fn

    cfg = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": ov.REWARD_PATH, "name": "compute_score"}}}
    )
    fn = get_custom_reward_fn(cfg)
    cases = [
        ("so the answer is \\boxed{4}", "4", 1.0),
        ("\\boxed{3} then \\boxed{\\frac{1}{2}}", "0.5", 1.0),  # the last box counts
        ("\\boxed{5}", "4", 0.0),
        ("four", "4", 0.0),  # no box, no reward (training is strict)
    ]
    # verl runs sync reward functions in executor threads: the grader must work there
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(
            pool.map(
                lambda c: fn(data_source="synthetic", solution_str=c[0], ground_truth=c[1], extra_info={}),
                cases,
            )
        )
    assert got == [c[2] for c in cases]


def test_luffy_think_format_reaches_the_reward_through_verls_reward_kwargs():
    """runs.luffy on a paper profile: verl passes reward_kwargs.think_format to compute_score, which then grades
    as LUFFY's released reward does (no </think>: wrong; the answer after the first </think>)."""
    from verl.trainer.ppo.reward import get_custom_reward_fn

    cfg = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": ov.REWARD_PATH,
                    "name": "compute_score",
                    "reward_kwargs": {"think_format": "luffy"},
                }
            }
        }
    )
    fn = get_custom_reward_fn(cfg)

    def score(text: str) -> float:
        return fn(data_source="openr1", solution_str=text, ground_truth="4", extra_info={})

    assert score("<think>2+2</think> so \\boxed{4}") == 1.0
    assert score("2+2</think> \\boxed{4}") == 1.0  # the template opened the block (LUFFY's prepends <think>)
    assert score("no think block: \\boxed{4}") == 0.0  # the released reward's format error
    assert score("<think>\\boxed{4}</think> \\boxed{5}") == 0.0
    plain = get_custom_reward_fn(
        OmegaConf.create(
            {"reward": {"custom_reward_function": {"path": ov.REWARD_PATH, "name": "compute_score"}}}
        )
    )
    assert plain(data_source="openr1", solution_str="no think block: \\boxed{4}", ground_truth="4") == 1.0
