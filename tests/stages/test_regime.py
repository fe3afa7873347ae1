"""`icpo regime`: the regime numbers (0-shot vs with demos) -- the schema the report reads, the numbers' arithmetic,
and prompts built exactly as the trainer builds them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from icpo_core.algorithm.demos import Demo, DemoPool, build_ief_messages
from icpo_core.cli import main
from icpo_core.engines.local import regime
from icpo_core.engines.local.data import PromptRow, chat_ids

SUMMARY_KEYS = {"groups_with_signal", "ci", "mean_reward"}


def _icpo(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _check_summary(s: dict, problems: int, k: int) -> None:
    assert set(s) >= SUMMARY_KEYS
    lo, hi = s["ci"]
    assert 0 <= lo <= s["groups_with_signal"] <= hi <= 1
    assert 0 <= s["mean_reward"] <= 1
    mlo, mhi = s["mean_reward_ci"]
    assert mlo <= s["mean_reward"] + 1e-12 and s["mean_reward"] <= mhi + 1e-12
    # a group with signal has a right and a wrong answer: at most the share of groups with any right answer
    assert s["groups_with_signal"] <= s["any_correct"] + 1e-12
    assert s["groups_with_signal"] * problems == pytest.approx(round(s["groups_with_signal"] * problems))
    assert s["tokens"] > 0


def test_regime_stage_on_a_tiny_model_writes_the_schema(project, capsys):
    from icpo_core.models.tiny import write_tiny_model

    root = project(
        {
            "data": {"synthetic": {"levels": [0, 1], "train_per_level": 20, "demos_per_level": 10}},
            "regime": {"problems": 12, "k": 4, "backend": "hf"},
            "train": {"max_response_length": 8},
        }
    )
    write_tiny_model(root / "models/base")
    for stage in ("prepare-train", "prepare-demos"):
        rc, _, err = _icpo(capsys, stage)
        assert rc == 0, err
    rc, out, err = _icpo(capsys, "regime")
    assert rc == 0, err
    assert (
        out.startswith("regime: 12 problems x 4 (hf): groups with signal 0-shot ")
        and "metrics/regime.json" in out
    )
    m = json.loads((root / "metrics/regime.json").read_text())
    assert {"problems", "k", "levels", "zero_shot", "with_demos"} <= set(m)
    assert (m["problems"], m["k"], m["levels"], m["backend"]) == (12, 4, [0, 1], "hf")
    assert isinstance(m["problems"], int) and isinstance(m["k"], int)
    assert (m["max_tokens"], m["k_demos"], m["demo_format"]) == (8, 1, "chat_turns")
    for cond in ("zero_shot", "with_demos"):
        _check_summary(m[cond], 12, 4)
        assert m[cond]["tokens"] <= 12 * 4 * 8
    assert 0 <= m["rescued"] <= m["with_demos"]["any_correct"] + 1e-12
    assert [
        p.name for p in root.joinpath("metrics").iterdir() if p.name.startswith(".")
    ] == []  # atomic write


def test_regime_stage_refuses_a_run_without_demos(project, capsys):
    project({"regime": {"run": "grpo"}})
    rc, _, err = _icpo(capsys, "regime")
    assert rc == 2
    assert err.startswith("icpo regime: error: regime.run 'grpo' samples no demo-conditioned rollouts")
    assert len(err.strip().splitlines()) == 1


def test_regime_run_must_be_a_run(project, capsys):
    project({"regime": {"run": "nope"}})
    rc, _, err = _icpo(capsys, "regime")
    assert rc == 2 and "regime.run names 'nope', which is not in runs" in err


# ------------------------------------------------------------------------------------------- the library


def test_group_summary_counts_groups_with_signal():
    rewards = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=float)
    s = regime.group_summary(rewards)
    assert s["groups_with_signal"] == pytest.approx(2 / 5)
    assert s["mean_reward"] == pytest.approx(7 / 20)
    assert s["any_correct"] == pytest.approx(3 / 5) and s["all_correct"] == pytest.approx(1 / 5)
    assert s["ci"] == pytest.approx(list(regime.wilson(2, 5)))
    lo, hi = s["mean_reward_ci"]
    assert 0 <= lo < 7 / 20 < hi <= 1
    assert regime.group_summary(rewards, seed=0) == s  # seeded bootstrap


def test_wilson_interval():
    assert regime.wilson(0, 128)[0] == 0 and regime.wilson(0, 128)[1] == pytest.approx(0.0291, abs=1e-4)
    lo, hi = regime.wilson(17, 128)  # 13 %
    assert (lo, hi) == pytest.approx((0.0846, 0.2024), abs=1e-4)
    assert regime.wilson(0, 0) == (0.0, 1.0)


def test_rescued_counts_problems_only_demos_solve():
    zero = np.array([[0, 0], [0, 0], [1, 0], [0, 0]], dtype=float)
    demos = np.array([[1, 0], [0, 0], [0, 0], [1, 1]], dtype=float)
    r = regime.rescued(zero, demos)
    assert r["rescued"] == pytest.approx(2 / 4) and r["rescued_ci"] == pytest.approx(
        list(regime.wilson(2, 4))
    )


class _Tok:
    """A character tokenizer with a chat template of plain turns (enough for prompt building)."""

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids) -> str:
        return "".join(map(chr, ids))


class _FakeEngine:
    """A rollout engine that answers the gold (found by the question in the prompt) when the prompt holds a demo,
    else a wrong number; records every call."""

    name = "fake"

    def __init__(self, golds_by_question: dict[str, str], demo_marker: str):
        self.tokenizer = _Tok()
        self.golds = golds_by_question
        self.marker = demo_marker
        self.calls: list[tuple[list[str], int | None]] = []

    def generate(self, prompt_ids, *, max_new_tokens, temperature, top_p=1.0, seed=None):
        texts = [self.tokenizer.decode(p) for p in prompt_ids]
        self.calls.append((texts, seed))
        out = []
        for text in texts:
            gold = next(g for q, g in self.golds.items() if q in text)
            out.append(f"so \\boxed{{{gold if self.marker in text else '-1'}}}")
        return SimpleNamespace(texts=out, lengths=[5] * len(out))


def test_measure_builds_the_trainers_prompts_and_counts():
    tok = _Tok()
    system = {"role": "system", "content": "Solve."}
    suffix = " Box it."
    rows = []
    for i in range(6):
        q = f"Question {i}: what is {i} + 1?"
        messages = [system, {"role": "user", "content": q + suffix}]
        rows.append(PromptRow(messages, str(i + 1), q, suffix, tuple(chat_ids(tok, messages))))
    pool = DemoPool(
        [Demo(f"Demo problem {j}.", f"Worked {j}, $= \\boxed{{{j}}}$.", str(j)) for j in range(3)]
    )
    engine = _FakeEngine({r.question: r.gold for r in rows}, "Demo problem")

    def grade(texts, golds):
        return [float(t == f"so \\boxed{{{g}}}") for t, g in zip(texts, golds, strict=True)]

    s = regime.RegimeSettings(k=4, max_tokens=8, k_demos=1, demo_format="chat_turns", seed=3, chunk=10)
    m = regime.measure(engine, tok, grade, rows, pool, s)
    z, d = m["zero_shot"], m["with_demos"]
    assert (z["mean_reward"], z["groups_with_signal"], z["any_correct"]) == (0.0, 0.0, 0.0)
    assert (d["mean_reward"], d["groups_with_signal"], d["all_correct"]) == (1.0, 0.0, 1.0)
    assert m["rescued"] == 1.0 and z["boxed"] == d["boxed"] == 1.0
    assert (z["tokens"], d["tokens"]) == (6 * 4 * 5, 6 * 4 * 5)
    # calls of <= chunk prompts, each seeded, seeds differing between calls and conditions
    sent = [t for texts, _ in engine.calls for t in texts]
    assert all(len(texts) <= 10 for texts, _ in engine.calls) and len(sent) == 2 * 6 * 4
    seeds = [seed for _, seed in engine.calls]
    assert None not in seeds and len(set(seeds)) == len(seeds)
    # 0-shot: each problem's plain prompt k times, side by side, as a trainer's step sends its group
    plain, ief = sent[:24], sent[24:]
    assert plain == [tok.decode(r.prompt_ids) for r in rows for _ in range(4)]
    # with demos: k samples per problem, each IEF prompt the one build_ief_messages makes for its own draw
    assert all("Demo problem" in t for t in ief) and not any("Demo problem" in t for t in plain)
    for i, text in enumerate(ief):
        row = rows[i // 4]
        demo = next(x for x in pool.demos if x.problem in text)
        assert text == tok.apply_chat_template(build_ief_messages(row.messages, [demo], "chat_turns", suffix))
    again = _FakeEngine({r.question: r.gold for r in rows}, "Demo problem")
    regime.measure(again, tok, grade, rows, pool, s)
    assert again.calls == engine.calls  # seeded: the same prompts and call seeds


def test_ief_prompts_released_format_is_the_raw_string():
    tok = _Tok()
    messages = [{"role": "user", "content": "What is 2 + 2? Box it."}]
    row = PromptRow(messages, "4", "What is 2 + 2?", " Box it.", tuple(chat_ids(tok, messages)))
    pool = DemoPool([Demo("Compute $1 + 1$.", "$1 + 1 = \\boxed{2}$.", "2"), Demo("Q2", "\\boxed{3}", "3")])
    s = regime.RegimeSettings(k=2, k_demos=1, demo_format="released")
    [prompts] = regime.ief_prompts([row], pool, tok, s)
    text = tok.decode(prompts[0])
    assert text.startswith("Question: ") and "<user>" not in text and text.endswith("\nAnswer:")


def test_pick_problems_is_seeded():
    rows = list(range(50))
    a = regime.pick_problems(rows, 10, seed=1)
    assert a == regime.pick_problems(rows, 10, seed=1) and a == sorted(a) and len(set(a)) == 10
    assert a != regime.pick_problems(rows, 10, seed=2)
    assert regime.pick_problems(rows, 80, seed=1) == rows


def test_levels_of_reads_the_parquet(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    info = [{"question": "a", "level": 1}, {"question": "b", "level": 3}, {"question": "c", "level": 1}]
    pq.write_table(pa.table({"extra_info": info}), path)
    rows = [PromptRow([], "1", q, "", ()) for q in ("a", "c")]
    assert regime.levels_of(path, rows) == [1]
