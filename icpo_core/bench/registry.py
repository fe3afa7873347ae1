"""The benchmark registry: ``benchmarks.yaml`` (built in) plus an optional user YAML, resolved against params.

A benchmark is data: where its problems come from, how to prompt, how to sample, which metrics and answer
fallbacks apply. :func:`resolve_benchmarks` turns ``params.bench.benchmarks`` (names, suites, local file paths)
into a list of fully resolved :class:`BenchmarkSpec`, with the params' sampling overrides applied.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from icpo_core import paths
from icpo_core.config import BenchParams, Params, deep_merge
from icpo_core.errors import UserError
from icpo_core.grading import FALLBACKS

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
# `answer_from`: where the gold answer is in the answer field. boxed: its last \boxed{} (a worked solution, e.g.
# NuminaMath-CoT's `solution`), found by the same extraction the responses get
ANSWER_FROM = ("boxed",)
_PARAM_REF = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    top_p: float
    top_k: int | None
    max_tokens: int


@dataclass(frozen=True)
class BenchmarkSpec:
    """One resolved benchmark. ``source`` has exactly one of hub / path / url (+ config, split)."""

    name: str
    source: dict[str, Any]
    fields: dict[str, list[str]]
    sampling: Sampling
    prompt_suffix: str = ""
    system_prompt: str | None = None
    keep_system: bool = False
    answer_regex: str | None = None
    pass_k: list[int] = field(default_factory=lambda: [1])
    fallbacks: list[str] = field(default_factory=list)
    answer_from: str | None = None

    @property
    def ks(self) -> list[int]:
        """The k of pass@k reported: the declared ones up to n, and n itself."""
        return sorted({k for k in self.pass_k if k <= self.sampling.n} | {self.sampling.n})

    def fingerprint(self) -> str:
        """Hash of everything that changes the samples (a changed spec regenerates this benchmark)."""
        spec = asdict(self)
        if (
            spec["answer_from"] is None
        ):  # added later: unset, it leaves older specs' fingerprints as they were
            del spec["answer_from"]
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def builtin_registry() -> dict[str, Any]:
    text = resources.files("icpo_core.bench").joinpath("benchmarks.yaml").read_text()
    return yaml.safe_load(text)


def load_registry(extra: str | Path | None = None) -> dict[str, Any]:
    """The built-in registry with an optional user YAML (same format) merged over it."""
    reg = builtin_registry()
    if extra:
        path = Path(extra)
        if not path.is_file():
            raise UserError(f"bench.registry: {path} not found")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"bench.registry: {path} is not valid YAML: {e}") from None
        if not isinstance(user, dict) or not set(user) <= {"suites", "defaults", "benchmarks"}:
            raise UserError(
                f"bench.registry: {path} must be a mapping with keys suites / defaults / benchmarks"
            )
        reg = deep_merge(reg, user)
    return reg


_MISSING = object()


def _lookup_param(params: Params, dotted: str) -> Any:
    """The params value at ``dotted``; a key that does not exist is an error, a null leaf is ``None``."""
    obj: Any = params
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        obj = obj.get(part, _MISSING) if isinstance(obj, dict) else getattr(obj, part, _MISSING)
        if obj is _MISSING or (obj is None and i < len(parts) - 1):
            raise UserError(f"benchmark registry refers to params '{dotted}', which is not set")
    return obj


def _as_list(v: Any) -> list[str]:
    return [v] if isinstance(v, str) else list(v or [])


def _spec(name: str, raw: dict[str, Any], defaults: dict[str, Any], params: Params | None) -> BenchmarkSpec:
    entry = deep_merge(defaults, raw)
    for key in ("prompt_suffix", "system_prompt"):
        m = _PARAM_REF.match(str(entry.get(key) or ""))
        if m:
            if params is None:
                raise UserError(f"benchmark '{name}': {key} reads params '{m.group(1)}' but no params given")
            value = _lookup_param(params, m.group(1))
            if value is None and key == "prompt_suffix":
                raise UserError(
                    f"benchmark '{name}': prompt_suffix reads params '{m.group(1)}', which is null"
                )
            entry[key] = None if value is None else str(value)
    source = dict(entry.get("source") or {})
    kinds = [k for k in ("hub", "path", "url") if source.get(k)]
    if len(kinds) != 1:
        raise UserError(f"benchmark '{name}': source needs exactly one of hub / path / url, got {source}")
    fields = entry.get("fields") or {}
    fallbacks = _as_list(entry.get("fallbacks"))
    bad = [f for f in fallbacks if f not in FALLBACKS]
    if bad:
        raise UserError(f"benchmark '{name}': unknown fallbacks {bad}; allowed: {list(FALLBACKS)}")
    answer_from = entry.get("answer_from") or None
    if answer_from is not None and answer_from not in ANSWER_FROM:
        raise UserError(
            f"benchmark '{name}': answer_from must be one of {list(ANSWER_FROM)}, got {answer_from!r}"
        )
    s = dict(entry.get("sampling") or {})
    if params is not None:
        overrides = [params.bench, params.bench.per_benchmark.get(name)]
        for o in overrides:
            if o is None:
                continue
            for key in ("n", "temperature", "top_p", "top_k", "max_tokens"):
                if getattr(o, key) is not None:
                    s[key] = getattr(o, key)
    try:
        sampling = Sampling(
            n=int(s["n"]),
            temperature=float(s["temperature"]),
            top_p=float(s.get("top_p", 1.0)),
            top_k=None if s.get("top_k") in (None, 0, -1) else int(s["top_k"]),
            max_tokens=int(s["max_tokens"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"benchmark '{name}': bad or missing sampling value ({e}); got {s}") from None
    return BenchmarkSpec(
        name=name,
        source=source,
        fields={
            "problem": _as_list(fields.get("problem") or ["problem", "question", "Problem", "Question"]),
            "answer": _as_list(fields.get("answer") or ["answer", "Answer", "final_answer"]),
        },
        sampling=sampling,
        prompt_suffix=str(entry.get("prompt_suffix") or ""),
        system_prompt=entry.get("system_prompt") or None,
        keep_system=bool(entry.get("keep_system", False)),
        answer_regex=entry.get("answer_regex") or None,
        pass_k=[int(k) for k in entry.get("pass_k") or [1]],
        fallbacks=fallbacks,
        answer_from=answer_from,
    )


def resolve_benchmarks(
    names: list[str], params: Params | None = None, registry: dict[str, Any] | None = None
) -> list[BenchmarkSpec]:
    """Specs for benchmark names, suite names and local file paths, in order, without duplicates."""
    if registry is None:
        registry = load_registry(params.bench.registry if params is not None else None)
    benchmarks = registry.get("benchmarks") or {}
    suites = registry.get("suites") or {}
    defaults = registry.get("defaults") or {}
    expanded: list[str] = []
    for name in names:
        for n in suites.get(name, [name]):
            if n not in expanded:
                expanded.append(n)
    specs = []
    for name in expanded:
        if name in benchmarks:
            specs.append(_spec(name, copy.deepcopy(benchmarks[name]), defaults, params))
        elif name.endswith(LOCAL_SUFFIXES) or "/" in name:
            # A local file in one of the two common layouts, no registry entry needed.
            path = Path(name)
            specs.append(_spec(path.stem, {"source": {"path": name}}, defaults, params))
        else:
            raise UserError(
                f"bench.benchmarks: unknown benchmark '{name}'; known: {sorted(benchmarks)}, "
                f"suites: {sorted(suites)}, or a path to a local .jsonl / .parquet file"
            )
    names_seen = [s.name for s in specs]
    dupes = {n for n in names_seen if names_seen.count(n) > 1}
    if dupes:
        raise UserError(f"bench.benchmarks: several benchmarks are named {sorted(dupes)}; rename the files")
    return specs


def default_sampling(bench: BenchParams) -> dict[str, Any]:
    """The run-wide sampling overrides of params (for the metrics JSON)."""
    return {k: getattr(bench, k) for k in ("n", "temperature", "top_p", "top_k", "max_tokens")}


def val_benchmark_names(params: Params) -> list[str]:
    """The resolved benchmark names of ``train.verl.val_benchmarks`` (suites expanded, files named by stem)."""
    names = params.train.verl.val_benchmarks
    return [spec.name for spec in resolve_benchmarks(names, params)] if names else []


def val_parquet_paths(params: Params, out_dir: str | Path = paths.VAL_DIR) -> list[Path]:
    """Where ``icpo prepare-val`` writes each validation benchmark (what the verl launch passes as
    ``data.val_files``): one ``data/val/<name>.parquet`` per resolved ``train.verl.val_benchmarks`` entry."""
    return [paths.val_parquet(name, out_dir) for name in val_benchmark_names(params)]
