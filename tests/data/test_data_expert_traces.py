"""LUFFY's expert traces: the chat template's assistant turn, end-of-turn kept, truncation counted."""

from __future__ import annotations

import pytest

from icpo_core.data.expert_traces import expert_trace
from icpo_core.models.tiny import hf_tokenizer


@pytest.fixture(scope="module")
def tok():
    return hf_tokenizer()


MESSAGES = [{"role": "system", "content": "Solve."}, {"role": "user", "content": "What is 2 + 5?"}]
TARGET = "2 + 5 = 7.\nThe answer is \\boxed{7}."


def test_trace_is_the_assistant_turn_the_template_renders_after_the_generation_prompt(tok):
    tr = expert_trace(tok, MESSAGES, TARGET, 512)
    assert tr is not None and not tr.truncated
    assert tr.ids[-1] == tok.eos_token_id and tok.eos_token_id not in tr.ids[:-1]
    assert tr.text == TARGET
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    # prompt + trace decodes to the chat-templated conversation up to the end of the assistant turn
    full = tok.apply_chat_template([*MESSAGES, {"role": "assistant", "content": TARGET}], tokenize=False)
    assert prompt + tok.decode(list(tr.ids)) == full.rstrip("\n")


def test_long_trace_is_truncated_to_the_response_length_and_flagged(tok):
    full = expert_trace(tok, MESSAGES, TARGET, 512)
    cut = expert_trace(tok, MESSAGES, TARGET, 6)
    assert cut.truncated and cut.ids == full.ids[:6] and tok.eos_token_id not in cut.ids
    assert "\\boxed{7}" not in cut.text  # graded on what is left: usually no final answer
    exact = expert_trace(tok, MESSAGES, TARGET, len(full.ids))
    assert not exact.truncated and exact.ids == full.ids


@pytest.mark.parametrize("target", ["", "   \n"])
def test_empty_target_has_no_trace(tok, target):
    assert expert_trace(tok, MESSAGES, target, 64) is None
