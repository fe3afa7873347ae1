"""Run benchmarks on one model: generate, grade, write per-sample rows as they finish, summarise; resumable.

Resume: every sample row carries a fingerprint of (model weights, benchmark spec incl. sampling, backend,
seed). On start, rows whose fingerprint no longer matches, and problems with fewer than ``n`` rows (a write
cut by a kill), are dropped; problems that are complete are not generated again. Rows are appended one
chunk at a time, so an interrupted bench loses at most the chunk in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from icpo_core.bench.backends import Backend, Completion
from icpo_core.bench.loaders import BenchProblem, load_problems
from icpo_core.bench.metrics import overall_average, summarize_benchmark
from icpo_core.bench.registry import BenchmarkSpec
from icpo_core.errors import UserError
from icpo_core.grading import Grader
from icpo_core.io_utils import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
STATE_FILE = "state.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def model_fingerprint(model_dir: str | Path, cache: dict[str, Any] | None = None) -> str:
    """sha256 over the model folder's config, tokenizer and weight files (weights hashed once per size+mtime)."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserError(f"{model_dir}: no model files")
    cache = cache if cache is not None else {}
    h = hashlib.sha256()
    for p in files:
        rel = str(p.relative_to(model_dir))
        st = p.stat()
        key = f"{rel}:{st.st_size}:{st.st_mtime_ns}"
        digest = cache.get(key)
        if digest is None:
            with p.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if p.suffix in _WEIGHT_SUFFIXES:
                cache[key] = digest
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()[:16]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Sample rows; a torn last line (killed mid-write) is skipped."""
    rows = []
    if not path.exists():
        return rows
    with path.open() as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with path.open("a") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _chunks(items: Sequence[BenchProblem], size: int) -> Iterator[Sequence[BenchProblem]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class BenchRunner:
    """Benchmarks one model into ``out_dir`` (samples.jsonl, state.json). The backend is built only if needed."""

    def __init__(
        self,
        model_dir: str | Path,
        out_dir: str | Path,
        *,
        backend_factory: Callable[[], Backend],
        backend_name: str,
        seed: int = 0,
        grade_workers: int = 2,
        grade_timeout_s: float = 5.0,
        chunk_prompts: int = 32,
        limit: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.out_dir = Path(out_dir)
        self.backend_factory = backend_factory
        self.backend_name = backend_name
        self.seed = seed
        self.grade_workers = grade_workers
        self.grade_timeout_s = grade_timeout_s
        self.chunk_prompts = max(1, chunk_prompts)
        self.limit = limit
        self._backend: Backend | None = None
        self.samples_path = self.out_dir / SAMPLES_FILE
        self.state_path = self.out_dir / STATE_FILE

    # state --------------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return json.loads(self.state_path.read_text())
        return {}

    def _fp(self, model_fp: str, spec: BenchmarkSpec) -> str:
        raw = f"{model_fp}|{spec.fingerprint()}|{self.backend_name}|{self.seed}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            t = time.monotonic()
            self._backend = self.backend_factory()
            log.info(
                "loaded %s backend for %s in %.1fs", self.backend_name, self.model_dir, time.monotonic() - t
            )
        return self._backend

    # main ---------------------------------------------------------------------------------------------
    def run(self, specs: Sequence[BenchmarkSpec], run_name: str) -> dict[str, Any]:
        t_start = time.monotonic()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        model_fp = model_fingerprint(self.model_dir, state.setdefault("hash_cache", {}))
        fps = {s.name: self._fp(model_fp, s) for s in specs}
        problems = {s.name: load_problems(s, self.limit) for s in specs}

        rows = read_rows(self.samples_path)
        kept = self._valid_rows(rows, specs, fps)
        if len(kept) != len(rows):
            log.info("dropping %d stale or partial sample rows", len(rows) - len(kept))
            with atomic_path(self.samples_path) as tmp:
                tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
        timing = state.setdefault("timing", {})
        for s in specs:  # timing of a benchmark restarts with its samples
            if timing.get(s.name, {}).get("fp") != fps[s.name]:
                timing[s.name] = {"fp": fps[s.name], "generate_s": 0.0, "grade_s": 0.0}
        atomic_write_json(self.state_path, state)

        done = {(r["benchmark"], r["problem_id"]) for r in kept}
        todo = {s.name: [p for p in problems[s.name] if (s.name, p.id) not in done] for s in specs}
        n_todo = sum(len(v) for v in todo.values())
        log.info(
            "bench %s: %d problems to generate, %d already done",
            run_name,
            n_todo,
            sum(len(v) for v in problems.values()) - n_todo,
        )
        if n_todo:
            with Grader(self.grade_workers, self.grade_timeout_s) as grader:
                for spec in specs:
                    self._bench_one(spec, todo[spec.name], fps[spec.name], grader, timing[spec.name], state)
        if self._backend is not None:
            self._backend.close()

        all_rows = read_rows(self.samples_path)
        by_bench: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in all_rows:
            by_bench[r["benchmark"]].append(r)
        per_bench = {}
        for spec in specs:
            ids = {p.id for p in problems[spec.name]}
            rows_b = [r for r in by_bench[spec.name] if r["problem_id"] in ids]
            m = summarize_benchmark(rows_b, spec.ks)
            m["sampling"] = {
                k: getattr(spec.sampling, k) for k in ("n", "temperature", "top_p", "top_k", "max_tokens")
            }
            per_bench[spec.name] = m
        gen_s = sum(timing[s.name]["generate_s"] for s in specs)
        grade_s = sum(timing[s.name]["grade_s"] for s in specs)
        return {
            "run": run_name,
            "model": str(self.model_dir),
            "model_fingerprint": model_fp,
            "backend": self.backend_name,
            "seed": self.seed,
            "benchmarks": per_bench,
            "average": {"avg_at_n": overall_average(per_bench)},
            "timing": {
                "generate_s": round(gen_s, 3),
                "grade_s": round(grade_s, 3),
                "grade_share": round(grade_s / (gen_s + grade_s), 4) if gen_s + grade_s > 0 else None,
                "this_session_s": round(time.monotonic() - t_start, 3),
            },
        }

    def _valid_rows(
        self, rows: list[dict[str, Any]], specs: Sequence[BenchmarkSpec], fps: dict[str, str]
    ) -> list[dict[str, Any]]:
        n_of = {s.name: s.sampling.n for s in specs}
        counts: dict[tuple[str, str], set[int]] = defaultdict(set)
        fresh = [r for r in rows if r.get("benchmark") in fps and r.get("fp") == fps[r["benchmark"]]]
        for r in fresh:
            counts[(r["benchmark"], r["problem_id"])].add(int(r["sample"]))
        complete = {k for k, v in counts.items() if len(v) == n_of[k[0]]}
        # Rows of other benchmarks (not in this run's list) are kept untouched.
        others = [r for r in rows if r.get("benchmark") not in fps]
        seen: set[tuple[str, str, int]] = set()
        kept = []
        for r in fresh:
            key = (r["benchmark"], r["problem_id"], int(r["sample"]))
            if (r["benchmark"], r["problem_id"]) in complete and key not in seen:
                seen.add(key)
                kept.append(r)
        return others + kept

    def _bench_one(
        self,
        spec: BenchmarkSpec,
        problems: list[BenchProblem],
        fp: str,
        grader: Grader,
        timing: dict[str, Any],
        state: dict[str, Any],
    ) -> None:
        if not problems:
            return
        per_chunk = (
            max(1, self.chunk_prompts // spec.sampling.n) if self.backend_name == "hf" else self.chunk_prompts
        )
        total = len(problems)
        finished = 0
        for chunk in _chunks(problems, per_chunk):
            rendered = [self.backend.render(p.messages) for p in chunk]
            t0 = time.monotonic()
            completions = self.backend.generate(rendered, spec.sampling)
            t1 = time.monotonic()
            responses, golds = [], []
            for prompt, p, comps in zip(rendered, chunk, completions, strict=True):
                prefix = "<think>\n" if prompt.opens_thinking else ""
                for c in comps:
                    responses.append(prefix + c.text)
                    golds.append(p.answer)
            verdicts = grader.grade(responses, golds, fallbacks=spec.fallbacks)
            t2 = time.monotonic()
            rows = []
            v_iter = iter(verdicts)
            for p, comps in zip(chunk, completions, strict=True):
                for j, c in enumerate(comps):
                    rows.append(self._row(spec, p, j, c, next(v_iter), fp))
            _append_rows(self.samples_path, rows)
            timing["generate_s"] += t1 - t0
            timing["grade_s"] += t2 - t1
            atomic_write_json(self.state_path, state)
            finished += len(chunk)
            acc = sum(r["correct"] for r in rows) / len(rows)
            log.info(
                "%s: %d/%d problems (chunk acc %.2f, gen %.1fs, grade %.2fs)",
                spec.name,
                finished,
                total,
                acc,
                t1 - t0,
                t2 - t1,
            )

    @staticmethod
    def _row(spec: BenchmarkSpec, p: BenchProblem, j: int, c: Completion, v: Any, fp: str) -> dict[str, Any]:
        return {
            "benchmark": spec.name,
            "problem_id": p.id,
            "problem": p.problem,
            "gold": p.answer,
            "sample": j,
            "response": c.text,
            "extracted": v.extracted,
            "correct": v.correct,
            "timed_out": v.timed_out,
            "reason": v.reason,
            "tokens": c.tokens,
            "finish_reason": c.finish_reason,
            "fp": fp,
        }
