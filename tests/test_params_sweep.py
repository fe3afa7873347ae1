"""Every leaf of the repository's params.yaml, mutated, either stays valid where the value is legal or fails with
one line naming its exact key path.

The leaves are derived by walking params.yaml (sections, lists and their elements, profiles and runs included), so
a key added to the file is swept without touching this test. Validation runs in-process (the whole sweep takes
about a second); a handful of subprocess runs of ``icpo`` check exit code 2, one stderr line and no traceback.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from icpo_core.config import ParamsError, parse_params

REPO = Path(__file__).resolve().parents[1]
RAW: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text())

KeyPath = tuple[str | int, ...]

# name -> the value a leaf is replaced with
MUTATIONS: dict[str, Any] = {
    "list": [[1], 2],  # wrong for every leaf, lists included (their elements are scalars)
    "dict": {"unexpected": 1},
    "negative": -7,
    "null": None,
    "empty_list": [],
    "empty_string": "",
    "bool": True,  # a bool where an int / float / string / list / mapping belongs is not coerced
    "string": "ten",  # a word where a number / bool / list / mapping belongs
}

# (leaf path with any `profiles.<name>.` prefix dropped and `runs.<name>.` read as `algorithm.`, mutation):
# the mutated value is legal. Keep this list small; every entry must still validate (checked below).
ALLOWED: dict[tuple[str, str], str] = {
    ("algorithm.delta", "negative"): "a reward threshold; below 0 accepts every IEF trajectory",
    ("data.train.prompt_suffix", "empty_string"): "no instruction appended to the question",
    ("data.synthetic.prompt_suffix", "empty_string"): "no instruction appended to the question",
    ("train.verl.val_files", "empty_list"): "no extra validation files",
    ("train.verl.val_benchmarks", "empty_list"): "no in-training validation",
    ("train.verl.extra_overrides", "empty_list"): "no raw hydra overrides",
    ("model.revision", "string"): "any branch, tag or commit of the hub repository",
    ("tracking.tracking_uri", "string"): "MLflow takes a bare word as a local store folder",
    ("study.ablations", "empty_list"): "a study of the main runs only (DVC expands no ablation stage)",
    ("report.pairs", "empty_list"): "only the comparisons with GRPO",
    ("report.baseline", "null"): "no every-run-against-one comparisons (primary and report.pairs only)",
    ("study.primary", "null"): "no preregistered primary comparison (the report says so)",
    ("data.synthetic.system_prompt", "null"): "no system turn (the embedded_strict profile)",
    ("data.synthetic.system_prompt", "string"): "any system turn text",
}


def key_path(path: KeyPath) -> str:
    """``("train", "verl", "val_files", 0)`` -> ``train.verl.val_files[0]`` (the form errors use)."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def walk(node: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """Every node below the root: sections (mappings), lists, list elements and scalars."""
    if path:
        yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, (*path, i))


def allow_key(path: KeyPath) -> str:
    parts = list(path)
    if parts[:1] == ["profiles"] and len(parts) > 2:
        parts = parts[2:]
    elif parts[:1] == ["runs"] and len(parts) > 2:
        parts = ["algorithm", *parts[2:]]
    return key_path(tuple(parts))


def mutations_of(value: Any) -> dict[str, Any]:
    """The mutations that change ``value`` into something of another kind (not the other bool of a bool leaf,
    not another word for a string leaf, not null for a leaf that is already null)."""
    out = {}
    for name, new in MUTATIONS.items():
        if type(new) is type(value) and new == value:
            continue
        if name == "bool" and isinstance(value, bool):
            continue
        if name == "string" and isinstance(value, str):
            continue
        out[name] = new
    return out


def with_value(raw: dict[str, Any], path: KeyPath, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    node: Any = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = copy.deepcopy(value)
    return out


LEAVES = list(walk(RAW))


def test_the_walk_reaches_every_kind_of_leaf():
    """Guards the sweep itself: it reaches inside profiles, runs, flow-style mappings and list elements."""
    paths = {key_path(p) for p, _ in LEAVES}
    assert {
        "seed",
        "profile",
        "train.steps",
        "algorithm.delta",
        "runs.grpo.n_off",
        "runs.icpo",
        "data.synthetic.levels[0]",
        "bench.per_benchmark",
        "profiles.embedded",
        "profiles.paper_qwen3_1_7b.train.verl.val_benchmarks[2]",
        "profiles.paper_qwen3_8b.bench.tensor_parallel",
    } <= paths
    assert len(LEAVES) > 150


def test_repo_params_validate():
    assert parse_params(copy.deepcopy(RAW)).profile == RAW["profile"]


@pytest.mark.parametrize("path", [p for p, _ in LEAVES], ids=[key_path(p) for p, _ in LEAVES])
def test_every_mutation_of_a_leaf_is_legal_or_names_the_key(path: KeyPath, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in the mutated values resolve in an empty folder
    value = dict(LEAVES)[path]
    key = key_path(path)
    # the key followed by ':' (the value), '.' (a key below it) or '[' (an element), never a longer name
    names_key = re.compile(re.escape(f"params.yaml: {key}") + r"[:.\[]|" + re.escape(f" {key}") + r"[:.\[]")
    problems = []
    for name, new in mutations_of(value).items():
        allowed = (allow_key(path), name) in ALLOWED
        try:
            parse_params(with_value(RAW, path, new), source="params.yaml")
        except ParamsError as e:
            msg = str(e)
            if allowed:
                problems.append(f"{name}: allow-listed as legal but rejected: {msg}")
            elif "\n" in msg or not msg.startswith("params.yaml: ") or not names_key.search(msg):
                problems.append(f"{name} ({new!r}): message does not name {key!r} on one line: {msg}")
            elif f"{key}: " in msg and "(got " not in msg.split(f"{key}: ", 1)[1]:
                problems.append(f"{name} ({new!r}): message does not show the bad value: {msg}")
            continue
        except Exception as e:  # noqa: BLE001 -- any other exception is the defect this test looks for
            problems.append(f"{name} ({new!r}): {type(e).__name__} instead of ParamsError: {e}")
            continue
        if not allowed:
            problems.append(f"{name} ({new!r}): accepted")
    assert not problems, f"{key}:\n  " + "\n  ".join(problems)


def test_allow_list_names_existing_leaves():
    """A stale entry would silently allow nothing; every entry must name a leaf of params.yaml."""
    keys = {allow_key(p) for p, _ in LEAVES}
    assert {k for k, _ in ALLOWED} <= keys


# ------------------------------------------------------------------------------------------- the real command

BAD_FILES = [
    # (id, edit of the repo's params.yaml text, the key the one stderr line must name, command)
    (
        "negative-seed",
        ("seed: 0", "seed: -7"),
        "seed: must be greater than or equal to 0 (got -7)",
        ["validate"],
    ),
    (
        "profile-a-list",
        ("profile: embedded", "profile: [1, 2]"),
        "profile: must be a profile name",
        ["validate"],
    ),
    (
        "bool-for-int",
        ("  steps: 8\n", "  steps: true\n"),
        "train.steps: must be an integer (got True)",
        ["validate"],
    ),
    (
        "inactive-profile",
        ("      steps: 400\n", "      steps: -400\n"),
        "profiles.paper_qwen3_1_7b.train.steps: must be greater than or equal to 1 (got -400)",
        ["validate"],
    ),
    # a stage command: params are validated before the stage is imported or runs
    (
        "train-stage",
        ("seed: 0", "seed: 4294967296"),
        "seed: must be less than or equal to",
        ["train", "--run", "grpo"],
    ),
    (
        "bench-stage",
        ("  n: null ", "  n: [1] "),
        "bench.n: must be an integer (got [1])",
        ["bench", "--run", "base"],
    ),
]


@pytest.mark.parametrize(
    ("edit", "expected", "command"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_icpo_exits_2_with_one_line(tmp_path, edit, expected, command):
    text = (REPO / "params.yaml").read_text()
    assert edit[0] in text, f"params.yaml no longer has {edit[0]!r}; update this case"
    (tmp_path / "params.yaml").write_text(text.replace(edit[0], edit[1], 1))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "icpo_core.cli", "--params", "params.yaml", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"icpo {command[0]}: invalid params: params.yaml: "), lines[0]
    assert expected in lines[0], lines[0]
    assert proc.stdout == ""
