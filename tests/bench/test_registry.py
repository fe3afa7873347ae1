"""The benchmark registry: built-ins resolve, params override sampling, suites and local paths work."""

from __future__ import annotations

import pytest
from bench_helpers import make_params

from icpo_core.bench.registry import builtin_registry, load_registry, resolve_benchmarks
from icpo_core.errors import UserError

BUILT_IN = [
    "math500",
    "aime24",
    "aime25",
    "amc23",
    "minerva",
    "olympiadbench",
    "numinamath",
    "gsm8k",
    "gpqa_diamond",
]


def params(**bench):
    return make_params(bench=bench)


def test_every_built_in_resolves_with_one_source():
    specs = resolve_benchmarks([*BUILT_IN, "synthetic", "paper_val"], params())
    names = [s.name for s in specs]
    assert names[: len(BUILT_IN)] == BUILT_IN
    assert {"synthetic_l0", "synthetic_l1", "synthetic_l2", "synthetic_l3"} <= set(names)
    assert len(names) == len(set(names))  # the paper_val suite adds nothing new: no duplicates
    for s in specs:
        assert sum(bool(s.source.get(k)) for k in ("hub", "path", "url")) == 1
        assert s.sampling.n >= 1 and s.sampling.max_tokens > 0
    by = {s.name: s for s in specs}
    assert by["aime24"].sampling.n == 32 and by["math500"].sampling.n == 1  # LUFFY: avg@32 on AIME/AMC
    assert by["gsm8k"].answer_regex and by["gsm8k"].fallbacks
    assert "LUFFY" in by["gpqa_diamond"].source["url"] and by["gpqa_diamond"].fallbacks == ["answer_letter"]


def test_paper_validation_trio_suite():
    reg = builtin_registry()
    assert reg["suites"]["paper_val"] == ["math500", "amc23", "aime24"]


def test_synthetic_reads_training_suffix_from_params():
    p = make_params(data={"synthetic": {"prompt_suffix": " BOX IT."}})
    [spec] = resolve_benchmarks(["synthetic_l1"], p)
    assert spec.prompt_suffix == " BOX IT."
    assert spec.source == {"path": "data/eval/synthetic_l1.jsonl"}
    # greedy, short: the registry's synthetic defaults (no bench.* override in params)
    assert spec.sampling.temperature == 0.0 and spec.sampling.max_tokens == 64


def test_synthetic_reads_training_system_prompt_from_params():
    [spec] = resolve_benchmarks(["synthetic_l0"], make_params(data={"synthetic": {"system_prompt": "SYS"}}))
    assert spec.system_prompt == "SYS"
    # null in params (the embedded_strict profile): no system turn at all, not the string "None"
    [spec] = resolve_benchmarks(["synthetic_l0"], make_params(data={"synthetic": {"system_prompt": None}}))
    assert spec.system_prompt is None


def test_a_registry_reference_to_a_missing_params_key_is_an_error(tmp_path):
    extra = tmp_path / "reg.yaml"
    extra.write_text(
        'benchmarks:\n  mine:\n    source: {path: x.jsonl}\n    system_prompt: "${data.synthetic.nope}"\n'
    )
    with pytest.raises(UserError, match="data.synthetic.nope"):
        resolve_benchmarks(["mine"], make_params(bench={"registry": str(extra)}))


def test_params_override_registry_sampling_and_change_fingerprint():
    base = resolve_benchmarks(["aime24", "math500"], params())
    over = resolve_benchmarks(
        ["aime24", "math500"], params(temperature=1.0, per_benchmark={"aime24": {"n": 4, "top_k": 20}})
    )
    assert over[0].sampling.n == 4 and over[0].sampling.top_k == 20 and over[0].sampling.temperature == 1.0
    assert over[1].sampling.n == 1 and over[1].sampling.temperature == 1.0
    assert base[1].fingerprint() != over[1].fingerprint()
    assert resolve_benchmarks(["math500"], params())[0].fingerprint() == base[1].fingerprint()
    assert over[0].ks == [1, 2, 4]


def test_local_file_paths_need_no_registry_entry(tmp_path):
    [spec] = resolve_benchmarks([str(tmp_path / "my_set.parquet")], params())
    assert spec.name == "my_set" and spec.source == {"path": str(tmp_path / "my_set.parquet")}


def test_unknown_names_and_bad_entries_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown benchmark 'nope'"):
        resolve_benchmarks(["nope"], params())
    bad = tmp_path / "extra.yaml"
    bad.write_text("benchmarks:\n  mine: {source: {hub: a/b, path: x.jsonl}}\n")
    with pytest.raises(UserError, match="exactly one of hub / path / url"):
        resolve_benchmarks(["mine"], params(registry=str(bad)))
    bad.write_text("benchmarks:\n  mine: {source: {path: x.jsonl}, fallbacks: [guess]}\n")
    with pytest.raises(UserError, match="unknown fallbacks"):
        resolve_benchmarks(["mine"], params(registry=str(bad)))
    with pytest.raises(UserError, match="not found"):
        load_registry(tmp_path / "missing.yaml")


def test_user_registry_adds_benchmarks_and_suites(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "suites: {mine: [toy, math500]}\n"
        "benchmarks:\n  toy: {source: {path: toy.jsonl}, sampling: {n: 3, temperature: 0.7}, pass_k: [1, 2]}\n"
    )
    specs = resolve_benchmarks(["mine"], params(registry=str(extra)))
    assert [s.name for s in specs] == ["toy", "math500"]
    assert specs[0].sampling.n == 3 and specs[0].sampling.max_tokens == 8192  # defaults filled in
    assert specs[0].ks == [1, 2, 3]


def test_the_papers_benchmarks_are_registered_with_its_sampling():
    """The paper's tables where public data exist: NuminaMath (its public test split, gold from the solution's
    box), Minerva, GSM8K, MATH-500, at LUFFY's evaluation settings the paper follows (T 0.6, top_p 1, 8192
    tokens, one sample)."""
    reg = builtin_registry()
    assert reg["suites"]["paper_tables"] == ["numinamath", "minerva", "gsm8k", "math500"]
    specs = {s.name: s for s in resolve_benchmarks(["paper_tables"], params())}
    assert list(specs) == ["numinamath", "minerva", "gsm8k", "math500"]
    numina = specs["numinamath"]
    assert numina.source == {"hub": "AI-MO/NuminaMath-CoT", "split": "test"}
    assert numina.fields == {"problem": ["problem"], "answer": ["solution"]} and numina.answer_from == "boxed"
    for s in specs.values():
        assert (s.sampling.n, s.sampling.temperature, s.sampling.top_p, s.sampling.max_tokens) == (
            1,
            0.6,
            1.0,
            8192,
        )


def test_answer_from_is_checked_and_leaves_older_fingerprints_alone(tmp_path):
    """A benchmark without answer_from hashes as before the key existed (finished samples are not regenerated)."""
    import hashlib
    import json
    from dataclasses import asdict

    [spec] = resolve_benchmarks(["math500"], params())
    old = {k: v for k, v in asdict(spec).items() if k != "answer_from"}
    assert spec.fingerprint() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    bad = tmp_path / "extra.yaml"
    bad.write_text("benchmarks:\n  mine: {source: {path: x.jsonl}, answer_from: guess}\n")
    with pytest.raises(UserError, match="answer_from must be one of"):
        resolve_benchmarks(["mine"], params(registry=str(bad)))
