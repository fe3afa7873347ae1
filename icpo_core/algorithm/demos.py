"""Implicit Expert Forcing prompts (paper section 3.1, "IEF"): k solved demos put in front of the question.

The paper samples the N_off IEF trajectories from the *same* policy conditioned on demonstrations,
pi_theta_old(. | [D; q]). GRPO has no such rows. This module only builds the conditioned prompt; which rows are
kept and how they are trained is in :mod:`icpo_core.algorithm.mixing` and :mod:`icpo_core.algorithm.losses`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

DemoFormat = Literal["chat_turns", "inline", "released"]

# The released code's instruction (ICLPromptBuilder). In a demo block it passes through str.format, which turns
# the doubled braces into "\boxed{}"; the target question gets the raw string, doubled braces and all.
RELEASED_INSTRUCTION = " Let's think step by step and output the final answer within \\boxed{{}}"
# What the released data preparation appends to every MATH demo question (math_dataset.py).
RELEASED_DEMO_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."


@dataclass(frozen=True)
class Demo:
    """One solved problem of the demo cache (``data/demos.parquet`` row)."""

    problem: str  # raw problem, without the prompt suffix
    solution: str  # worked solution ending in \boxed{answer}
    answer: str


def _norm(text: str) -> str:
    """Whitespace-insensitive key used to recognise the question itself among the demos."""
    return " ".join(text.split())


class DemoPool:
    """The demo cache D of the paper (section 3.1): solved problems IEF draws its k demonstrations from.

    Unlike the released code (a pickled ``DemoCache`` read from the working directory, which silently falls back
    to zero demos when the file is missing), the pool is built from explicit records and refuses to be empty.
    """

    def __init__(self, demos: Sequence[Demo]):
        if not demos:
            raise ValueError("the demo pool is empty: IEF needs at least one solved demo")
        self.demos: list[Demo] = list(demos)
        self._by_problem: dict[str, list[int]] = {}
        for i, d in enumerate(self.demos):
            self._by_problem.setdefault(_norm(d.problem), []).append(i)

    def __len__(self) -> int:
        return len(self.demos)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, object]]) -> DemoPool:
        """Records with ``problem``, ``solution``, ``answer`` keys (extra keys such as ``id`` are ignored)."""
        demos = []
        for i, r in enumerate(records):
            missing = [k for k in ("problem", "solution", "answer") if k not in r]
            if missing:
                raise ValueError(f"demo record {i} lacks {missing} (needs problem, solution, answer)")
            demos.append(Demo(str(r["problem"]), str(r["solution"]), str(r["answer"])))
        return cls(demos)

    @classmethod
    def from_parquet(cls, path: str | Path) -> DemoPool:
        """Load ``data/demos.parquet`` (schema in docs/architecture.md)."""
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["problem", "solution", "answer"])
        return cls.from_records(table.to_pylist())

    def sample(self, k: int, rng: np.random.Generator, exclude_problem: str | None = None) -> list[Demo]:
        """k distinct demos drawn uniformly at random (seeded by ``rng``), never ``exclude_problem`` itself.

        The paper draws demos at random (k = 1 in the released scripts). The question being trained on is
        excluded so that IEF never shows the policy the answer to the very problem it is asked.
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        excluded = self._by_problem.get(_norm(exclude_problem), []) if exclude_problem is not None else []
        available = len(self.demos) - len(excluded)
        if k > available:
            raise ValueError(f"asked for {k} demos but only {available} differ from the question")
        if k == 0:
            return []
        # Draw k + |excluded| distinct indices, drop the excluded ones, keep the first k: uniform over the rest.
        draw = rng.choice(len(self.demos), size=min(len(self.demos), k + len(excluded)), replace=False)
        skip = set(excluded)
        return [self.demos[int(i)] for i in draw if int(i) not in skip][:k]


def build_ief_messages(
    messages: Sequence[Mapping[str, str]],
    demos: Sequence[Demo],
    fmt: DemoFormat = "chat_turns",
    suffix: str = "",
) -> list[dict[str, str]]:
    """The IEF prompt [D; q] of the paper (section 3.1) as chat messages.

    ``messages`` is the plain training prompt (system turns, then one user turn: problem + suffix).

    - ``chat_turns`` (default): each demo is a prior user turn (demo problem + ``suffix``) followed by an
      assistant turn (its worked solution); then the real question, unchanged. On the offline model this format
      beats inline text (docs/method.md, "Demo format").
    - ``inline``: the released code's text layout put into ONE chat-templated user turn:
      ``Question: <demo problem><suffix>\\nAnswer: <solution>`` blocks joined by three newlines, then
      ``Question: <question>\\nAnswer:``. Not the released prompt byte for byte (that one has no chat template,
      a second instruction and literal doubled braces): use ``released`` (:func:`released_icl_prompt`) for that.

    ``released`` is a raw completion string, not chat messages: build it with :func:`build_ief_prompt`.
    GRPO never calls this (N_off = 0). With no demos the plain prompt is returned (a copy).
    """
    if fmt == "released":
        raise ValueError("demo_format 'released' is a raw string without chat template: use build_ief_prompt")
    msgs = [dict(m) for m in messages]
    if not demos:
        return msgs
    user_idx = [i for i, m in enumerate(msgs) if m.get("role") == "user"]
    if not user_idx:
        raise ValueError("the prompt has no user turn to put demos in front of")
    q_idx = user_idx[-1]
    head = [m for m in msgs[:q_idx] if m.get("role") == "system"]
    rest = [m for m in msgs[:q_idx] if m.get("role") != "system"]
    question = msgs[q_idx]["content"]
    if fmt == "chat_turns":
        shots: list[dict[str, str]] = []
        for d in demos:
            shots.append({"role": "user", "content": d.problem + suffix})
            shots.append({"role": "assistant", "content": d.solution})
        return head + shots + rest + msgs[q_idx:]
    if fmt == "inline":
        blocks = [f"Question: {d.problem}{suffix}\nAnswer: {d.solution}" for d in demos]
        content = "\n\n\n".join(blocks) + f"\n\n\nQuestion: {question}\nAnswer:"
        return head + rest + [{"role": "user", "content": content}] + msgs[q_idx + 1 :]
    raise ValueError(f"unknown demo format {fmt!r}: use 'chat_turns' or 'inline'")


def released_icl_prompt(question: str, demos: Sequence[Demo], demo_suffix: str = RELEASED_DEMO_SUFFIX) -> str:
    """The released code's IEF prompt, byte for byte (``ICLPromptBuilder(w_inst=True, w_prefix=True)``,
    empty system prompt): a raw completion string, fed to the model WITHOUT a chat template.

    Each demo block is ``Question: <demo question> Let's think ... \\boxed{}\\nAnswer: <solution>``, where the
    demo question is the cached MATH question, which already ends in ``demo_suffix`` (so the instruction appears
    twice); blocks are joined by three newlines; then ``Question: <question> Let's think ... \\boxed{{}}``
    (the literal doubled braces of the never-formatted instruction) and ``\\nAnswer:`` (the trailing space
    cut). With no demos it is ``Question: <question>\\nAnswer: `` (no instruction, trailing space kept).
    ``question`` is the bare problem: the released code splits the instruction off the user turn and strips it.
    """
    question = question.strip()
    if not demos:
        return f"Question: {question}\nAnswer: "
    blocks = [
        f"Question: {d.problem}{demo_suffix}{RELEASED_INSTRUCTION.replace('{{}}', '{}')}\nAnswer: {d.solution}"
        for d in demos
    ]
    prompt = "\n\n\n".join(blocks) + "\n\n\n" + f"Question: {question}{RELEASED_INSTRUCTION}\nAnswer: "
    return prompt[:-1]


def build_ief_prompt(
    messages: Sequence[Mapping[str, str]],
    demos: Sequence[Demo],
    fmt: DemoFormat = "chat_turns",
    suffix: str = "",
    question: str | None = None,
) -> list[dict[str, str]] | str:
    """The IEF prompt [D; q] in ``fmt``: chat messages (``chat_turns``, ``inline``) or, for ``released``, the
    raw string of :func:`released_icl_prompt` (``question`` is the bare problem; by default the last user turn
    without ``suffix``). Demo questions carry ``suffix``, as the released demo cache's carry the paper's."""
    if fmt != "released":
        return build_ief_messages(messages, demos, fmt, suffix)
    if question is None:
        users = [m["content"] for m in messages if m.get("role") == "user"]
        if not users:
            raise ValueError("the prompt has no user turn to put demos in front of")
        question = users[-1].removesuffix(suffix) if suffix else users[-1]
    return released_icl_prompt(question, demos, demo_suffix=suffix or RELEASED_DEMO_SUFFIX)
