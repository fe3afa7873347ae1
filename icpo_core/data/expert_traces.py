"""LUFFY's off-policy rows: the training row's ``target`` (the R1 trace on OpenR1, the worked solution on the
synthetic data) as a response of the policy, tokenised once with the policy's chat template.

LUFFY (arXiv 2504.14945; its released ``RLHFDatasetWithTarget``) tokenises ``target`` and appends EOS. Here the
response is what the chat template renders for an assistant turn holding ``target`` after the prompt's generation
prompt, cut after its first end-of-turn token, so the expert tokens are exactly the tokens the policy would emit to
write that answer (a template that adds a think block or other wrapper is followed). Traces longer than
``max_response_length`` are truncated to it, as LUFFY's rollout truncates ``prefix + continuation`` to the
response length; the truncated row keeps its place in the group and is graded on what is left (usually without
its final answer, so reward 0). Both are counted (``luffy/trace_truncated``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExpertTrace:
    """One expert response: token ids (ending in end-of-turn unless truncated) and the text the grader reads."""

    ids: tuple[int, ...]
    text: str
    truncated: bool


def expert_trace(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    target: str,
    max_response_length: int,
) -> ExpertTrace | None:
    """The expert trace of one training row; None when ``target`` is empty (the row has no expert solution)."""
    if not target or not target.strip():
        return None
    msgs = [dict(m) for m in messages]
    prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*msgs, {"role": "assistant", "content": target}], tokenize=False)
    eos = tokenizer.eos_token_id
    if full.startswith(prompt):
        ids = list(tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"])
    else:  # a template that rewrites earlier turns: LUFFY's own layout, the target and EOS
        ids = [*tokenizer(target, add_special_tokens=False)["input_ids"], eos]
    if eos in ids:
        ids = ids[
            : ids.index(eos) + 1
        ]  # the template's trailing newline after the end of turn is not emitted
    else:
        ids.append(eos)
    truncated = len(ids) > max_response_length
    ids = ids[:max_response_length]
    return ExpertTrace(tuple(ids), tokenizer.decode(ids, skip_special_tokens=True), truncated)
