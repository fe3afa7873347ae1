"""One loader for hub datasets and local copies: everything goes through ``datasets.load_dataset``.

A hub id and a local file (``data.*.path``) of the same layout take the same path, so the column adapters are
exercised by tests with small local files in the hub datasets' real layouts. Every failure becomes a
:class:`~icpo_core.errors.DataError` naming the dataset or file and what to do.

A local ``.jsonl`` file is read line by line instead (:func:`read_jsonl`): one damaged line (not UTF-8, not JSON,
not an object, over :data:`MAX_LINE_BYTES`) or one row whose fields have another type than the rest of the file
would make a whole-file reader fail, so each such line is dropped and counted with its line number and the rest
is kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from icpo_core.errors import DataError

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

# A text field longer than this drops its row ("oversized_text"): about 100k tokens at ~4 characters a token,
# beyond any token budget of the study (data.train.max_tokens 8192 as in the paper) and any model's context, and
# short enough that the tokenizer never sees a pathological multi-megabyte string.
MAX_TEXT_CHARS = 400_000
# A JSONL line longer than this is skipped without being held in memory (its text is over MAX_TEXT_CHARS anyway:
# 8 bytes a character covers UTF-8 and JSON's \uXXXX escapes).
MAX_LINE_BYTES = 8 * MAX_TEXT_CHARS

# drop reasons of damaged lines / fields, shared by the training set and the demo cache
NOT_UTF8 = "not_utf8"
BAD_JSON = "bad_json"
NOT_AN_OBJECT = "not_an_object"
WRONG_TYPE = "wrong_type"
OVERSIZED = "oversized_text"

_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}


def _builder_for(path: Path) -> str:
    builder = _FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use one of {sorted(_FILE_BUILDERS)}")
    return builder


@dataclass
class JsonlRows:
    """The usable JSON objects of a JSONL file with their 1-based line numbers, and the damaged lines."""

    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line, drop reason)

    @property
    def columns(self) -> list[str]:
        """Every key of any row, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)


def is_jsonl(path: str | Path | None) -> bool:
    """True for a local ``.jsonl`` file (read by :func:`read_jsonl`, not by ``datasets``)."""
    return path is not None and Path(path).suffix.lower() == ".jsonl" and Path(path).is_file()


def _read_line(f: BinaryIO, limit: int) -> tuple[bytes, bool]:
    """(next line, whether it was over ``limit`` bytes); an over-long line is consumed in chunks, never held."""
    line = f.readline(limit + 1)
    if len(line) <= limit or line.endswith(b"\n"):
        return line, False
    while True:
        chunk = f.readline(1 << 20)
        if not chunk or chunk.endswith(b"\n"):
            return b"", True


def read_jsonl(path: str | Path, *, max_line_bytes: int | None = None) -> JsonlRows:
    """Read a JSONL file line by line; blank lines are skipped, damaged ones recorded in ``bad`` by reason:
    ``not_utf8``, ``bad_json``, ``not_an_object`` or ``oversized_text`` (a line over ``max_line_bytes``, its
    newline not counted; default :data:`MAX_LINE_BYTES`)."""
    limit = MAX_LINE_BYTES if max_line_bytes is None else max_line_bytes
    out = JsonlRows(Path(path))
    try:
        f = open(path, "rb")  # noqa: SIM115 -- closed below; bytes: a bad line must not stop the read
    except OSError as e:
        raise DataError(f"{path}: cannot open it ({e.strerror})") from None
    with f:
        number = 0
        while True:
            line, oversized = _read_line(f, limit)
            if not line and not oversized:
                break
            number += 1
            if oversized:
                out.bad.append((number, OVERSIZED))
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                out.bad.append((number, NOT_UTF8))
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser's stack
                out.bad.append((number, BAD_JSON))
                continue
            if not isinstance(row, dict):
                out.bad.append((number, NOT_AN_OBJECT))
                continue
            out.rows.append(row)
            out.lines.append(number)
    return out


def _load_local(path: Path, config: str | None, split: str) -> datasets.Dataset:
    import datasets

    if path.is_dir():
        if (path / "dataset_info.json").exists() and (path / "state.json").exists():
            return datasets.load_from_disk(str(path))  # a Dataset.save_to_disk folder
        # A downloaded copy of the hub repo: datasets reads its card's configs (or infers the
        # data/train-* layout) exactly as it does on the hub, so `config` picks the same files.
        return datasets.load_dataset(str(path), config, split=split)
    return datasets.load_dataset(_builder_for(path), data_files=str(path), split="train")


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_table(
    hub_id: str,
    *,
    path: str | Path | None = None,
    config: str | None = None,
    split: str = "train",
    what: str = "dataset",
) -> datasets.Dataset:
    """Load ``hub_id`` (``config`` / ``split``) from the hub, or the local copy at ``path`` when given.

    ``what`` names the params key that chose the source, for error messages (e.g. ``data.train``).
    """
    import datasets
    from datasets.exceptions import DatasetGenerationError

    if path is not None:
        path = Path(path)
        if not path.exists():
            raise DataError(f"{what}.path: {path} does not exist")
        try:
            with _quiet("datasets"):  # its own error log would repeat what the DataError says
                return _load_local(path, config, split)
        except DataError:
            raise
        except (DatasetGenerationError, ValueError, OSError, TypeError) as e:
            cause = e.__cause__ or e
            raise DataError(
                f"{path}: cannot read it as a {path.suffix or 'dataset folder'} table "
                f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}); "
                "is the file complete and in the expected format?"
            ) from None
    try:
        return datasets.load_dataset(hub_id, config, split=split)
    except (
        Exception
    ) as e:  # hub errors come as many types (ConnectionError, HfHubHTTPError, DatasetNotFound...)
        raise DataError(
            f"cannot load dataset '{hub_id}' from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Offline? Download it on a machine with hub access "
            f"(e.g. `hf download --repo-type dataset {hub_id} --local-dir <folder>`) and set {what}.path to that "
            "folder or to one of its .parquet / .jsonl files"
        ) from None


def require_columns(ds: datasets.Dataset, needed: Iterable[str], *, source: str, layout: str) -> None:
    """Raise DataError naming ``source`` and the missing columns when ``ds`` lacks any of ``needed``."""
    require_column_names(ds.column_names, needed, source=source, layout=layout)


def require_column_names(columns: list[str], needed: Iterable[str], *, source: str, layout: str) -> None:
    """:func:`require_columns` for a list of column names (a JSONL file's keys)."""
    needed = list(needed)
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {missing} for the {layout} layout; expected {needed}, found {columns}"
        )


def dropped_summary(dropped: dict[str, int], first: dict[str, int], unit: str = "row") -> str:
    """``"bad_json 1 (first: line 3), no_answer 2 (first: line 5)"``, or ``"none"``."""
    parts = [
        f"{k} {v}" + (f" (first: {unit} {first[k]})" if k in first else "")
        for k, v in sorted(dropped.items())
    ]
    return ", ".join(parts) or "none"


def warn_dropped(
    logger: logging.Logger,
    name: str,
    what: str,
    rows_in: int,
    dropped: dict[str, int],
    first: dict[str, int],
    unit: str = "row",
) -> None:
    """One warning for a data stage's dropped rows (``"<name>: 3 of 40 <what> dropped: <dropped_summary>"``);
    nothing when none was dropped."""
    if dropped:
        logger.warning(
            "%s: %d of %d %s dropped: %s", name, sum(dropped.values()), rows_in, what,
            dropped_summary(dropped, first, unit),
        )  # fmt: skip
