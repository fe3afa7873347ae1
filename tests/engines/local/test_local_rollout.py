"""Rollouts and response log-probs: padding, EOS masks, and alignment with an unpadded forward pass."""

from __future__ import annotations

import torch

from icpo_core.engines.local.data import chat_ids
from icpo_core.engines.local.logprobs import batched_log_probs, build_sequences
from icpo_core.engines.local.rollout import generate, left_pad, response_mask_from


def _prompts(tok) -> list[list[int]]:
    qs = ["What is 2+3?", "Tom has 7 marbles and gets 6 more. How many marbles does Tom have now?", "1+1"]
    return [chat_ids(tok, [{"role": "user", "content": q}]) for q in qs]


def test_left_pad_and_eos_mask():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    tokens = torch.tensor([[4, 2, 2, 2], [4, 5, 6, 7], [2, 9, 2, 9]])
    assert response_mask_from(tokens, [2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_batched_greedy_generation_equals_one_by_one(tiny_model):
    """Left padding + position ids: a batch generates exactly what each prompt generates alone."""
    model, tok = tiny_model
    prompts = _prompts(tok)
    batch = generate(model, tok, prompts, max_new_tokens=10, temperature=0.0)
    for i, p in enumerate(prompts):
        alone = generate(model, tok, [p], max_new_tokens=10, temperature=0.0)
        n = int(alone.response_mask.sum())
        assert int(batch.response_mask[i].sum()) == n
        assert batch.response_ids[i, :n].tolist() == alone.response_ids[0, :n].tolist()
    assert batch.prefill_tokens == sum(len(p) for p in prompts)
    assert batch.gen_tokens == int(batch.response_mask.sum())


def test_sampling_is_seeded(tiny_model):
    model, tok = tiny_model
    prompts = _prompts(tok) * 2
    a = generate(model, tok, prompts, max_new_tokens=8, temperature=1.0, seed=3)
    b = generate(model, tok, prompts, max_new_tokens=8, temperature=1.0, seed=3)
    c = generate(model, tok, prompts, max_new_tokens=8, temperature=1.0, seed=4)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_response_log_probs_match_unpadded_forward(tiny_model):
    """Log-probs from padded [prompt | response] rows (logits only at response positions) equal a plain
    full-sequence forward of each row alone, and temperature divides the logits."""
    model, tok = tiny_model
    prompts = _prompts(tok)
    roll = generate(model, tok, prompts, max_new_tokens=6, temperature=1.0, seed=0)
    seqs = build_sequences(prompts, list(roll.response_ids), list(roll.response_mask), tok.pad_token_id)
    for temp in (1.0, 0.7):
        lp = batched_log_probs(model, seqs, micro_batch_size=2, temperature=temp)
        for i, p in enumerate(prompts):
            n = int(roll.response_mask[i].sum())
            resp = roll.response_ids[i, :n]
            full = torch.tensor([list(p) + resp.tolist()])
            with torch.no_grad():
                logits = model(input_ids=full).logits[0, len(p) - 1 : len(p) - 1 + n] / temp
            ref = torch.log_softmax(logits, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
            torch.testing.assert_close(lp[i, :n], ref, atol=1e-4, rtol=1e-4)
            assert torch.all(lp[i, n:] == 0)
