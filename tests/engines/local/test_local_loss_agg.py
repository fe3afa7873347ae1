"""The local engine's update uses the stated loss normalisation: one token-mean over the mini-batch by default,
the released code's per-micro-batch mean with ``released_loss_agg``."""

from __future__ import annotations

import pytest
import torch
from local_helpers import parity_reward

from icpo_core.algorithm.losses import compute_actor_loss, micro_batch_normalisation
from icpo_core.engines.local.logprobs import response_logits, token_log_probs
from icpo_core.engines.local.trainer import LocalTrainer


def _reference_grads(trainer: LocalTrainer, batch, released: bool) -> list[torch.Tensor]:
    """Gradients of one mini-batch computed by hand from icpo_core.algorithm, micro-batch by micro-batch."""
    a, mb_size = trainer.algo, trainer.train_cfg.micro_batch_size
    rows = batch.seqs.response_mask.shape[0]
    mini_tokens = int(batch.seqs.response_mask.sum())
    trainer.model.zero_grad(set_to_none=True)
    for s in range(0, rows, mb_size):
        e = min(s + mb_size, rows)
        mb = batch.seqs.rows(s, e)
        lp = token_log_probs(
            response_logits(trainer.model, mb, trainer.train_cfg.temperature), mb.response_ids
        )
        n_tok, scale = micro_batch_normalisation(
            a.loss_agg_mode,
            released_loss_agg=released,
            micro_rows=e - s,
            mini_rows=rows,
            mini_tokens=mini_tokens,
        )
        width = mb.response_width
        loss, _ = compute_actor_loss(
            lp, lp.detach(), batch.ref_log_prob[s:e, :width], None, batch.advantages[s:e],
            mb.response_mask, batch.ief_mask[s:e], a, batch_num_tokens=n_tok,
        )  # fmt: skip
        (loss * scale).backward()
    grads = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("released", [False, True])
def test_update_gradient_matches_the_stated_normalisation(tiny_project, released):
    root, params = tiny_project(
        algorithm={"n_on": 4, "released_loss_agg": released},
        train={"micro_batch_size": 3, "grad_clip": 1e9, "max_response_length": 16},
    )
    trainer = LocalTrainer(params, "icpo", root=root, reward_fn=parity_reward, progress=False)
    trainer.setup()
    batch, _ = trainer.rollout_step(1, trainer.prompts[:2])
    # The random model never stops early: cut the loss masks to unequal lengths (long and short micro-batches),
    # which is what makes the two conventions differ.
    for i in range(batch.seqs.response_mask.shape[0]):
        batch.seqs.response_mask[i, 16 if i < 3 else 2 + i % 3 :] = 0
    trainer.model.train()
    want = _reference_grads(trainer, batch, released)
    other = _reference_grads(trainer, batch, not released)

    captured: list[list[torch.Tensor]] = []
    trainer.optimizer.step = lambda *a, **k: captured.append(
        [p.grad.clone() for p in trainer.model.parameters()]
    )
    trainer.update(batch)
    (got,) = captured
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
    # and the two conventions really differ on this batch (the test would pass vacuously otherwise)
    assert max((w - o).abs().max().item() for w, o in zip(want, other, strict=True)) > 1e-6


def test_released_demo_format_reaches_generation_without_chat_template(tiny_project):
    import numpy as np

    root, params = tiny_project(algorithm={"n_on": 2, "n_off": 1, "demo_format": "released"})
    trainer = LocalTrainer(params, "icpo", root=root, reward_fn=parity_reward, progress=False)
    trainer.setup()
    row = trainer.prompts[0]
    prompts = trainer.generation_prompts([row], np.random.default_rng(0))
    assert [list(p) for p in prompts[:2]] == [list(row.prompt_ids)] * 2  # on-policy: the chat-templated q
    text = trainer.tokenizer.decode(prompts[2])
    assert text.startswith("Question: Leo has") and "<|im_start|>" not in text  # raw string, no template
    assert text.endswith(f"Question: {row.question} Let's think step by step and output the final answer "
                         "within \\boxed{{}}\nAnswer:")  # fmt: skip
