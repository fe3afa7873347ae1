"""LUFFY and the reward controls on the local engine (tiny random model): group layout, traces, advantages."""

from __future__ import annotations

import pytest
import torch
from local_helpers import parity_reward

from icpo_core.config import DEFAULT_RUNS
from icpo_core.engines.local.trainer import LocalTrainer

RUNS = {name: DEFAULT_RUNS[name] for name in ("luffy", "grpo_random_reward", "grpo_format_reward")}


def test_luffy_groups_are_rollouts_plus_the_expert_trace_with_mean_only_advantages(tiny_project):
    root, params = tiny_project(
        algorithm={"n_on": 4}, train={"prompts_per_step": 2, "max_response_length": 24}, runs=RUNS
    )
    algo = params.run_algorithm("luffy")
    assert (algo.n_off, algo.off_policy, algo.norm_adv_by_std, algo.clip_on_policy) == (
        1,
        "expert_trace",
        False,
        False,
    )
    trainer = LocalTrainer(params, "luffy", root=root, reward_fn=parity_reward, progress=False)
    trainer.setup()
    rows = trainer.prompts[:2]
    batch, m = trainer.rollout_step(1, rows)

    # the group keeps n_on rows: n_on - 1 rollouts, then the expert trace in the last slot, flagged off-policy
    assert batch.seqs.input_ids.shape[0] == 2 * 4
    assert batch.ief_mask.tolist() == [False, False, False, True] * 2
    assert m["icpo/ief_generated"] == 2 and m["icpo/ief_accepted"] == 2 and m["icpo/accept_rate"] == 1.0
    # only the rollouts were generated: 3 per prompt
    assert m["perf/prefill_tokens"] == sum(len(r.prompt_ids) for r in rows) * 3
    for g, row in enumerate(rows):
        trace = trainer.traces[row.prompt_ids]
        mask = batch.seqs.response_mask[4 * g + 3].bool()
        assert batch.seqs.response_ids[4 * g + 3][mask].tolist() == list(trace.ids)
        assert row.target and trace.text in row.target or trace.truncated
        # trained on the PLAIN prompt q, like every other row of the group
        assert batch.prompt_of_row[4 * g + 3] == g
    # LUFFY's advantage: R - mean over the whole mixed group, no std division
    rewards = torch.tensor(
        parity_reward([""] * 0, []) or [0.0]
    )  # placeholder so the names below read clearly
    del rewards
    texts = [
        trainer.tokenizer.decode(
            batch.seqs.response_ids[i][batch.seqs.response_mask[i].bool()], skip_special_tokens=True
        )
        for i in range(8)
    ]
    r = torch.tensor(parity_reward(texts, [""] * 8)).view(2, 4)
    expected = (r - r.mean(dim=1, keepdim=True)).view(-1)
    assert torch.allclose(batch.advantages, expected, atol=1e-6)
    # the traces are 24 tokens at most and counted when cut
    assert all(len(t.ids) <= 24 for t in trainer.traces.values())
    assert m["luffy/trace_truncated"] == sum(trainer.traces[r.prompt_ids].truncated for r in rows)
    out = trainer.update(batch)
    assert out["actor/grad_norm"] > 0 and out["actor/ief_token_frac"] > 0


def test_luffy_without_targets_is_a_clear_data_error(tiny_project):
    import pyarrow.parquet as pq

    from icpo_core.errors import DataError

    root, params = tiny_project(algorithm={"n_on": 4}, runs=RUNS)
    path = root / "data" / "train.parquet"
    table = pq.read_table(path)
    pq.write_table(
        table.set_column(table.schema.get_field_index("target"), "target", [[""] * table.num_rows]), path
    )
    trainer = LocalTrainer(params, "luffy", root=root, reward_fn=parity_reward, progress=False)
    with pytest.raises(DataError, match="no row has a `target`"):
        trainer.setup()


@pytest.mark.parametrize("run", ["grpo_random_reward", "grpo_format_reward"])
def test_reward_controls_train_on_their_reward_and_log_the_verifiers(tiny_project, run):
    root, params = tiny_project(algorithm={"n_on": 8}, train={"prompts_per_step": 2}, runs=RUNS)
    trainer = LocalTrainer(params, run, root=root, reward_fn=parity_reward, progress=False)
    trainer.setup()
    batch, m = trainer.rollout_step(1, trainer.prompts[:2])
    texts = [
        trainer.tokenizer.decode(
            batch.seqs.response_ids[i][batch.seqs.response_mask[i].bool()], skip_special_tokens=True
        )
        for i in range(16)
    ]
    verifier = parity_reward(texts, [""] * 16)
    assert m["reward/verifier_on_policy"] == pytest.approx(sum(verifier) / 16)
    if run == "grpo_format_reward":
        assert m["reward/on_policy"] == pytest.approx(sum("\\boxed{" in t and "}" in t for t in texts) / 16)
    else:
        again, m2 = trainer.rollout_step(1, trainer.prompts[:2])
        assert m2["reward/on_policy"] == m["reward/on_policy"]  # seeded per step
        assert torch.equal(again.advantages, batch.advantages)
