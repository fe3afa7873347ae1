"""The bench runner: per-sample rows, metrics, resume after an interruption, fingerprints, think handling."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from bench_helpers import make_params, write_limo_jsonl

from icpo_core.bench.backends import Completion, RenderedPrompt
from icpo_core.bench.registry import resolve_benchmarks
from icpo_core.bench.runner import BenchRunner, read_rows


class FakeBackend:
    """Answers "Q<k>" prompts: sample 0 right (\\boxed{k}), others wrong; optionally dies after some calls."""

    name = "hf"

    def __init__(self, fail_after_calls: int | None = None, think: bool = False):
        self.prompts_generated = 0
        self.calls = 0
        self.fail_after_calls = fail_after_calls
        self.think = think

    def render(self, messages):
        text = messages[-1]["content"] + ("<think>\n" if self.think else "")
        return RenderedPrompt(text=text, ids=[1, 2, 3])

    def generate(self, prompts, sampling):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt  # the job is killed mid-benchmark
        self.calls += 1
        self.prompts_generated += len(prompts)
        out = []
        for p in prompts:
            k = int(re.search(r"Q(\d+)", p.text).group(1))
            if self.think:
                texts = [f"hmm \\boxed{{0}}</think>so \\boxed{{{k}}}", f"still thinking \\boxed{{{k}}}"]
                texts = (texts * sampling.n)[: sampling.n]
            else:
                texts = [f"\\boxed{{{k if j == 0 else k + 1}}}" for j in range(sampling.n)]
            out.append([Completion(t, 5, "stop") for t in texts])
        return out

    def close(self):
        pass


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights-v1")
    write_limo_jsonl(tmp_path / "a.jsonl", [(f"Q{k}", str(k)) for k in range(10)])
    write_limo_jsonl(tmp_path / "b.jsonl", [(f"Q{k}", str(k)) for k in range(100, 104)])
    return tmp_path


def specs(n=2, **bench):
    return resolve_benchmarks(
        ["a.jsonl", "b.jsonl"], make_params(bench={"n": n, "temperature": 1.0, **bench})
    )


def runner(project: Path, backend: FakeBackend, built: list | None = None) -> BenchRunner:
    def factory():
        if built is not None:
            built.append(1)
        return backend

    return BenchRunner(
        project / "model",
        project / "bench" / "r",
        backend_factory=factory,
        backend_name="hf",
        grade_workers=1,
        grade_timeout_s=5.0,
        chunk_prompts=8,  # 4 problems per chunk at n = 2
    )


def test_rows_metrics_and_resume_after_interruption(project):
    backend = FakeBackend(fail_after_calls=2)
    with pytest.raises(KeyboardInterrupt):
        runner(project, backend).run(specs(), "r")
    rows = read_rows(project / "bench/r/samples.jsonl")
    assert len(rows) == 2 * 4 * 2  # two finished chunks of 4 problems x 2 samples survive
    assert set(rows[0]) >= {
        "benchmark", "problem", "gold", "sample", "response", "extracted", "correct", "reason", "tokens",
    }  # fmt: skip

    resumed = FakeBackend()
    metrics = runner(project, resumed).run(specs(), "r")
    assert resumed.prompts_generated == 10 + 4 - 8  # only the unfinished problems
    rows = read_rows(project / "bench/r/samples.jsonl")
    assert len(rows) == (10 + 4) * 2
    assert len({(r["benchmark"], r["problem_id"], r["sample"]) for r in rows}) == len(rows)
    a = metrics["benchmarks"]["a"]
    assert a["n_problems"] == 10 and a["n"] == 2
    assert a["avg_at_n"] == pytest.approx(0.5) and a["pass_at_2"] == pytest.approx(1.0)
    assert metrics["average"]["avg_at_n"] == pytest.approx(0.5)
    t = metrics["timing"]
    assert t["generate_s"] >= 0 and t["grade_s"] > 0 and 0 < t["grade_share"] <= 1


def test_finished_bench_does_not_load_the_model(project):
    runner(project, FakeBackend()).run(specs(), "r")
    built: list = []
    again = FakeBackend()
    metrics = runner(project, again, built).run(specs(), "r")
    assert built == [] and again.prompts_generated == 0
    assert metrics["benchmarks"]["b"]["n_problems"] == 4


def test_torn_write_and_partial_problem_are_regenerated(project):
    runner(project, FakeBackend()).run(specs(), "r")
    path = project / "bench/r/samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-line
    again = FakeBackend()
    runner(project, again).run(specs(), "r")
    assert again.prompts_generated == 1  # the problem whose second sample was cut
    assert len(read_rows(path)) == 28


def test_changed_params_or_model_start_over(project):
    runner(project, FakeBackend()).run(specs(), "r")
    changed = FakeBackend()
    over = resolve_benchmarks(
        ["a.jsonl", "b.jsonl"],
        make_params(bench={"n": 2, "temperature": 1.0, "per_benchmark": {"b": {"max_tokens": 7}}}),
    )
    runner(project, changed).run(over, "r")
    assert changed.prompts_generated == 4  # only benchmark b's settings changed
    (project / "model/model.safetensors").write_bytes(b"weights-v2")
    retrained = FakeBackend()
    runner(project, retrained).run(over, "r")
    assert retrained.prompts_generated == 14
    state = json.loads((project / "bench/r/state.json").read_text())
    assert set(state["timing"]) == {"a", "b"}


def test_thinking_responses_graded_after_close_tag(project):
    metrics = runner(project, FakeBackend(think=True)).run(specs(n=2), "r")
    rows = read_rows(project / "bench/r/samples.jsonl")
    done = [r for r in rows if r["sample"] == 0]
    cut = [r for r in rows if r["sample"] == 1]
    assert all(r["correct"] for r in done)  # the box after </think>, not the one inside
    assert all(r["extracted"] is None and not r["correct"] for r in cut)  # cut off while thinking
    assert metrics["benchmarks"]["a"]["no_answer_rate"] == pytest.approx(0.5)
