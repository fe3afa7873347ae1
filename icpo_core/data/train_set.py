"""The training set: any source -> normalised rows -> drop unusable rows (counted) -> token filter -> verl parquet.

Sources (``data.train.source``): ``synthetic`` (the offline generator's train split), ``openr1_46k`` (LUFFY's
filtered OpenR1 subset, as released: no further length filter), ``openr1_220k`` (OpenR1-Math-220k ``default``
with the project's own token-length filter) and ``local`` (a parquet / jsonl / folder in any of the layouts of
:mod:`icpo_core.data.openr1`, token-filtered). ``data.train.path`` replaces the hub for a hub source.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icpo_core.data import openr1, schema, synthetic
from icpo_core.data.loading import (
    JsonlRows,
    dropped_summary,
    load_table,
    local_json_lines,
    warn_dropped,
    where_label,
)
from icpo_core.errors import DataError

if TYPE_CHECKING:
    import datasets

    from icpo_core.config import Params

log = logging.getLogger(__name__)

# source -> (hub id, config, split)
HUB_DATASETS = {
    "openr1_46k": ("Elliott/Openr1-Math-46k-8192", None, "train"),
    "openr1_220k": ("open-r1/OpenR1-Math-220k", "default", "train"),
}
TOKEN_FILTERED = ("openr1_220k", "local")


@dataclass
class TrainStats:
    """What happened to the rows; written to metrics/prepare_train.json."""

    source: str
    dataset: str
    layout: str
    rows_in: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    max_tokens: int | None = None
    tokens: dict[str, float] = field(default_factory=dict)
    # reason -> the first dropped row's number in the source (1-based; a JSONL file's line number, or
    # "<file>:<line>" in a folder of JSONL files), in source order
    first_dropped_row: dict[str, int | str] = field(default_factory=dict)
    row_unit: str = "row"  # "line" for JSON lines

    def drop(self, reasons: Counter[str]) -> None:
        for reason, n in reasons.items():
            if reason:
                self.dropped[reason] = self.dropped.get(reason, 0) + n


# What a usable row holds, per layout: the fix named when no row of a file is usable.
ROW_NEEDS = {
    "plain": "a text 'problem' and a gold 'answer' (text or number) or a text 'solution' ending in \\boxed{answer}",
    "luffy": "a 'prompt' (text, or chat messages with a user turn) and reward_model.ground_truth (text or number)",
    "openr1": "a text 'problem', a gold 'answer', 'generations' (a list of texts) and correctness_math_verify "
    "marking one of them correct",
    "synthetic": "a generated problem (check data.synthetic)",
}


def _synthetic_rows(params: Params) -> list[dict[str, Any]]:
    splits = synthetic.splits_for(params)
    return [
        {"problem": p.problem, "answer": p.answer, "target": p.solution, "level": p.level, "drop": ""}
        for p in splits["train"]
    ]


def load_normalized(params: Params) -> tuple[datasets.Dataset, str, str]:
    """(normalised dataset with a ``drop`` column, dataset name, layout) for ``data.train``."""
    import datasets

    train = params.data.train
    if train.source == "synthetic":
        return datasets.Dataset.from_list(_synthetic_rows(params)), "synthetic", "synthetic"
    if train.source in HUB_DATASETS:
        hub_id, config, split = HUB_DATASETS[train.source]
        expected = "luffy" if train.source == "openr1_46k" else "openr1"
        rows = local_json_lines(train.path, config=config, split=split)
        if rows is not None:
            return _normalized_jsonl(rows, (hub_id, expected))
        raw = load_table(hub_id, path=train.path, config=config, split=split, what="data.train")
        name = train.path or hub_id
        layout = openr1.detect_layout(raw.column_names)
        _require_layout(name, layout, raw.column_names, hub_id, expected)
    elif (rows := local_json_lines(train.path)) is not None:
        return _normalized_jsonl(rows)
    else:
        raw = load_table("", path=train.path, what="data.train")
        name = str(train.path)
        layout = _local_layout(name, raw.column_names)
    norm = raw.map(
        openr1.NORMALIZERS[layout],
        batched=True,
        batch_size=1000,
        num_proc=_procs(train.num_proc, len(raw)),
        remove_columns=raw.column_names,
        load_from_cache_file=False,
        desc=f"normalising {layout} rows",
    )
    return norm, name, layout


def _require_layout(name: str, layout: str | None, columns: list[str], hub_id: str, expected: str) -> None:
    if layout != expected:
        needed = openr1.LUFFY_COLUMNS if expected == "luffy" else openr1.OPENR1_COLUMNS
        missing = [c for c in needed if c not in columns]
        raise DataError(
            f"{name}: not in the {hub_id} layout: missing column(s) {missing}; expected {list(needed)}, "
            f"found {columns}"
        )


def _local_layout(name: str, columns: list[str]) -> str:
    layout = openr1.detect_layout(columns)
    if layout is None:
        raise DataError(
            f"{name}: unknown layout: expected the verl/LUFFY columns {list(openr1.LUFFY_COLUMNS)}, the "
            f"OpenR1-Math columns {list(openr1.OPENR1_COLUMNS)} or problem + answer/solution; "
            f"found {columns}"
        )
    return layout


_NORM_FEATURES = {
    "problem": "string",
    "answer": "string",
    "target": "string",
    "level": "int64",
    "drop": "string",
}


def _normalized_jsonl(
    rows: JsonlRows, hub: tuple[str, str] | None = None
) -> tuple[datasets.Dataset, str, str]:
    """Local JSON lines (a file, or a folder's files), normalised in Python (their rows may disagree on types,
    which Arrow cannot hold): one normalised row per non-blank line, damaged lines included with their reason,
    a ``row`` column holding the line number (numbered on across a folder's files: the source order) and, for a
    folder, a ``where`` column naming the file (``<file>:<line>``). ``hub``: (hub id, layout) the rows must be
    in (a local copy of a hub source)."""
    import datasets

    name = str(rows.path)
    if not rows.rows:
        bad = Counter(reason for _, reason in rows.bad)
        first = {r: rows.where(n) for n, r in reversed(rows.bad)}
        raise DataError(
            f"{name}: no usable row ({len(rows.bad)} lines; dropped: "
            f"{dropped_summary(dict(bad), first, 'line')}); each line must be a JSON object (UTF-8) with "
            f"{ROW_NEEDS['plain']}, or the verl/LUFFY or OpenR1-Math columns"
        )
    # the file's layout is its rows' most common one: a stray row with other keys does not change it (that row
    # lacks the layout's fields and is dropped for it)
    votes = Counter(openr1.detect_layout(list(r)) for r in rows.rows)
    votes.pop(None, None)
    layout = votes.most_common(1)[0][0] if votes else None
    if hub is None:
        layout = layout or _local_layout(name, rows.columns)
    else:
        _require_layout(name, layout, rows.columns, *hub)
    normalize = openr1.NORMALIZERS[layout]
    out: dict[str, list[Any]] = {k: [] for k in (*_NORM_FEATURES, "row")}
    for start in range(0, len(rows.rows), 1000):
        chunk = rows.rows[start : start + 1000]
        batch = {c: [r.get(c) for r in chunk] for c in rows.columns}
        for k, v in normalize(batch).items():
            out[k].extend(v)
        out["row"].extend(rows.lines[start : start + 1000])
    for line, reason in rows.bad:
        for k, v in {
            "problem": "",
            "answer": "",
            "target": "",
            "level": -1,
            "drop": reason,
            "row": line,
        }.items():
            out[k].append(v)
    order = sorted(range(len(out["row"])), key=out["row"].__getitem__)  # source order
    columns = {**_NORM_FEATURES, "row": "int64"}
    table = {k: [v[i] for i in order] for k, v in out.items()}
    if rows.files:
        columns["where"] = "string"
        table["where"] = [str(rows.where(n)) for n in table["row"]]
    features = datasets.Features({k: datasets.Value(t) for k, t in columns.items()})
    return datasets.Dataset.from_dict(table, features=features), name, layout


def _first_dropped(norm: datasets.Dataset) -> dict[str, int | str]:
    """reason -> where its first dropped row is (the ``where`` column of a folder's JSON lines, else the
    ``row`` column, else the 1-based position), in source order."""
    drops = norm["drop"]
    if "where" in norm.column_names:
        rows: Any = norm["where"]
    else:
        rows = [int(r) for r in norm["row"]] if "row" in norm.column_names else range(1, len(drops) + 1)
    first: dict[str, int | str] = {}
    for reason, row in zip(drops, rows, strict=True):
        if reason and reason not in first:
            first[reason] = row
    return first


def _procs(num_proc: int, rows: int) -> int | None:
    """Worker processes for datasets.map: none for small tables (process start-up costs more than it saves)."""
    return num_proc if num_proc > 1 and rows >= 2000 else None


def _data_source(params: Params) -> str:
    source = params.data.train.source
    return HUB_DATASETS[source][0] if source in HUB_DATASETS else source


def token_filter(ds: datasets.Dataset, *, tokenizer_dir: str, suffix: str, max_tokens: int, num_proc: int):
    """(rows within ``max_tokens`` prompt + trace tokens, number dropped, token stats); batched, multi-process.

    Only the token counts are written by the map (the long traces are not copied); the kept rows are an index
    selection of ``ds``.
    """
    counts = ds.select_columns(["problem", "target"]).map(
        openr1.count_tokens,
        batched=True,
        batch_size=256,
        num_proc=_procs(num_proc, len(ds)),
        fn_kwargs={"tokenizer_dir": tokenizer_dir, "suffix": suffix},
        remove_columns=["problem", "target"],
        load_from_cache_file=False,  # the fingerprint does not see a changed tokenizer behind the same path
        desc=f"counting tokens (max {max_tokens})",
    )["n_tokens"]
    keep = [i for i, n in enumerate(counts) if n <= max_tokens]
    stats = {"max": max(counts, default=0), "mean": sum(counts) / max(len(counts), 1)}
    return ds.select(keep), len(ds) - len(keep), stats


def build_train_set(params: Params, out_path: str | Path, tokenizer_dir: str | Path | None) -> TrainStats:
    """Build ``data/train.parquet`` at ``out_path`` (the caller makes it atomic); returns the stats."""
    train = params.data.train
    norm, name, layout = load_normalized(params)
    stats = TrainStats(source=train.source, dataset=name, layout=layout, rows_in=len(norm))
    stats.drop(Counter(norm["drop"]))
    stats.first_dropped_row = _first_dropped(norm)
    unit = stats.row_unit = "line" if "row" in norm.column_names else "row"
    warn_dropped(log, name, "rows", stats.rows_in, stats.dropped, stats.first_dropped_row, unit)
    ds = norm.filter(lambda b: [d == "" for d in b["drop"]], batched=True, load_from_cache_file=False)
    suffix = params.train_prompt_suffix
    system = params.data.synthetic.system_prompt if train.source == "synthetic" else None

    if train.source in TOKEN_FILTERED and len(ds):
        if tokenizer_dir is None:
            raise DataError(
                "the token-length filter needs the base model's tokenizer; run `icpo base-model` first"
            )
        ds, too_long, stats.tokens = token_filter(
            ds,
            tokenizer_dir=str(tokenizer_dir),
            suffix=suffix,
            max_tokens=train.max_tokens,
            num_proc=train.num_proc,
        )
        stats.max_tokens = train.max_tokens
        if too_long:
            stats.dropped["too_long"] = too_long

    if not len(ds):
        reasons = dropped_summary(stats.dropped, {})
        first = next(iter(stats.first_dropped_row.values()), None)  # the earliest: they are in source order
        where = f" (the first at {where_label(unit, first)})" if first is not None else ""
        raise DataError(
            f"{name}: no rows left after filtering ({stats.rows_in} rows in; dropped: {reasons}){where}. A row "
            f"must hold {ROW_NEEDS[layout]}, within data.train.max_tokens ({train.max_tokens})"
        )
    if train.max_rows is not None and len(ds) > train.max_rows:
        # A seeded subset, kept in the source order.
        picked = sorted(random.Random(params.seed).sample(range(len(ds)), train.max_rows))
        stats.dropped["over_max_rows"] = len(ds) - train.max_rows
        ds = ds.select(picked)

    data_source = _data_source(params)
    verl = ds.map(
        _to_verl_rows,
        batched=True,
        with_indices=True,
        fn_kwargs={"data_source": data_source, "suffix": suffix, "system": system},
        remove_columns=ds.column_names,
        features=schema.train_features(),
        load_from_cache_file=False,
        desc="writing verl rows",
    )
    verl.to_parquet(str(out_path))
    schema.check_schema(out_path, schema.TRAIN_SCHEMA)
    stats.rows_kept = len(verl)
    return stats


def _to_verl_rows(
    batch: dict[str, list[Any]], indices: list[int], data_source: str, suffix: str, system: str | None
):
    rows = [
        schema.train_row(
            data_source=data_source,
            problem=problem,
            answer=answer,
            index=index,
            suffix=suffix,
            level=level,
            target=target or "",
            system=system,
        )
        for problem, answer, target, level, index in zip(
            batch["problem"], batch["answer"], batch["target"], batch["level"], indices, strict=True
        )
    ]
    return {c: [r[c] for r in rows] for c in schema.TRAIN_COLUMNS}


def write_eval_sets(params: Params, out_dir: str | Path) -> dict[str, int]:
    """The synthetic held-out levels as ``<out_dir>/synthetic_l<level>.jsonl``; returns rows per benchmark."""
    syn = params.data.synthetic
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for level in syn.levels:
        rows = synthetic.generate_level(level, {"eval": syn.eval_per_level}, params.seed)["eval"]
        name = synthetic.eval_name(level)
        counts[name] = schema.write_eval_jsonl(
            (
                {
                    "id": p.id,
                    "problem": p.problem,
                    "answer": p.answer,
                    "solution": p.solution,
                    "level": p.level,
                }
                for p in rows
            ),
            out_dir / f"{name}.jsonl",
        )
    return counts
