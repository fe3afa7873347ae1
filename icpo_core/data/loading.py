"""One loader for hub datasets and local copies: everything goes through ``datasets.load_dataset``.

A hub id and a local file (``data.*.path``) of the same layout take the same path, so the column adapters are
exercised by tests with small local files in the hub datasets' real layouts. Every failure becomes a
:class:`~icpo_core.errors.DataError` naming the dataset or file and what to do.

Local JSON lines are read line by line instead (:func:`local_json_lines`, :func:`read_jsonl`): one damaged line
(not UTF-8, not JSON, not an object, over :data:`MAX_LINE_BYTES`) or one row whose fields have another type than
the rest of the file would make ``datasets``' whole-file reader fail, so each such line is dropped and counted
with its line number and the rest is kept. That holds for a ``.jsonl`` file, a ``.json`` file in JSON lines, and
a local folder copy of a hub dataset whose data files of the split are such files (their lines numbered
``<file>:<line>``). Parquet / arrow files, a ``.json`` holding one JSON document, and ``save_to_disk`` folders stay
with ``datasets``; a damaged JSON document is one :class:`~icpo_core.errors.DataError` naming the file and where
its text breaks.
"""

from __future__ import annotations

import bisect
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
    """The usable JSON objects of a JSONL file (or of a folder's, numbered on across them) with their 1-based
    line numbers, and the damaged lines."""

    path: Path  # the file, or the folder of :attr:`files`
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line, drop reason)
    n_lines: int = 0  # lines read: a folder's next file numbers its lines on from here
    # a folder's files: (lines of the files before it, name relative to the folder); empty for a single file
    files: list[tuple[int, str]] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """Every key of any row, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def where(self, line: int) -> int | str:
        """Where ``line`` (a number of :attr:`lines` / :attr:`bad`) is: the line itself in a single file,
        ``"<file>:<line in it>"`` in a folder's files (numbered on across them, so the numbers also give the
        source order)."""
        if not self.files:
            return line
        start, name = self.files[bisect.bisect_right(self.files, line - 1, key=lambda f: f[0]) - 1]
        return f"{name}:{line - start}"


def where_label(unit: str, where: int | str) -> str:
    """``"line 3"`` for a row number, ``"data/b.jsonl:3"`` for a :meth:`JsonlRows.where` that names its file."""
    return f"{unit} {where}" if isinstance(where, int) else where


def _json_lines(path: Path) -> bool:
    """Whether a ``.json`` file holds JSON lines (one object a line) rather than one JSON document.

    Read from its first two non-blank lines only (a hub file may be gigabytes): a file opening with ``[`` is a
    document (an array of rows); otherwise it is JSON lines when its first line is a whole JSON object, or its
    second is (the first damaged). A document spread over lines has neither. An empty file counts as JSON
    lines, so it gets read_jsonl's "no usable row" naming the file."""
    with path.open("rb") as f:
        seen = 0
        while seen < 2:
            line, oversized = _read_line(f, MAX_LINE_BYTES)
            if not line and not oversized:
                return seen == 0
            text = line.decode("utf-8", errors="replace").strip().removeprefix("\ufeff")
            if not text and not oversized:
                continue
            if seen == 0 and text.startswith("["):
                return False
            seen += 1
            try:
                if isinstance(json.loads(text), dict):
                    return True
            except (ValueError, RecursionError):
                pass
    return False


def is_jsonl(path: str | Path | None) -> bool:
    """True for a local file read line by line by :func:`read_jsonl`, not by ``datasets``: a ``.jsonl`` file,
    or a ``.json`` file in JSON lines (:func:`_json_lines`)."""
    if path is None or not Path(path).is_file():
        return False
    suffix = Path(path).suffix.lower()
    return suffix == ".jsonl" or (suffix == ".json" and _json_lines(Path(path)))


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
                text = line.decode("utf-8-sig" if number == 1 else "utf-8")  # a leading byte-order mark
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
    out.n_lines = number
    return out


def _saved_to_disk(folder: Path) -> bool:
    """A ``Dataset.save_to_disk`` folder (arrow files + state): ``datasets.load_from_disk`` reads it."""
    return (folder / "dataset_info.json").exists() and (folder / "state.json").exists()


def _split_files(folder: Path, config: str | None, split: str) -> list[Path] | None:
    """The data files of ``split`` in a local folder copy of a hub dataset, chosen as ``datasets.load_dataset``
    chooses them (the card's ``configs``, else the ``data/<split>-*`` layout), without reading them; None
    when ``datasets`` cannot resolve them (it then gives its own error, as a DataError)."""
    import datasets

    try:
        with _quiet("datasets"):
            data_files = datasets.load_dataset_builder(str(folder), config).config.data_files or {}
    except Exception:  # no data files, an unknown config, a broken card: datasets' load says which
        return None
    for name, files in data_files.items():
        if str(name) == split:
            return sorted(Path(f) for f in files)
    return None


def _relative(file: Path, folder: Path) -> str:
    """``file`` (an absolute path from datasets' resolution) relative to ``folder``, for messages."""
    for base in (folder.resolve(), folder.absolute()):
        if file.is_relative_to(base):
            return file.relative_to(base).as_posix()
    return file.name


def local_json_lines(
    path: str | Path | None, *, config: str | None = None, split: str = "train"
) -> JsonlRows | None:
    """The rows of a local source read line by line, or None when ``datasets`` reads it (:func:`load_table`).

    Line by line: a file of :func:`is_jsonl`, or a folder (a local copy of a hub dataset, ``config`` /
    ``split`` resolved as on the hub) whose data files of ``split`` all are: every file in sorted order, its
    lines numbered on from the previous file's (:meth:`JsonlRows.where` names the file), the dropped lines of
    all files together. A folder with any parquet / arrow file or JSON document, and a ``save_to_disk``
    folder, stay with ``datasets``."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return read_jsonl(path) if is_jsonl(path) else None
    if not path.is_dir() or _saved_to_disk(path):
        return None
    files = _split_files(path, config, split)
    if not files or not all(is_jsonl(f) for f in files):
        return None
    out = JsonlRows(path)
    for file in files:
        part = read_jsonl(file)
        start = out.n_lines
        out.files.append((start, _relative(file, path)))
        out.rows.extend(part.rows)
        out.lines.extend(start + n for n in part.lines)
        out.bad.extend((start + n, reason) for n, reason in part.bad)
        out.n_lines = start + part.n_lines
    return out


def _load_local(path: Path, config: str | None, split: str) -> datasets.Dataset:
    import datasets

    if path.is_dir():
        if _saved_to_disk(path):
            return datasets.load_from_disk(str(path))
        # A downloaded copy of the hub repo: datasets reads its card's configs (or infers the
        # data/train-* layout) exactly as it does on the hub, so `config` picks the same files.
        return datasets.load_dataset(str(path), config, split=split)
    return datasets.load_dataset(_builder_for(path), data_files=str(path), split="train")


def _damaged_json(path: Path, config: str | None, split: str) -> DataError | None:
    """After ``datasets`` failed on ``path``: the error naming the first ``.json`` file of it (the file, or the
    split's files of a folder) that is no JSON at all, and where its text breaks; None when every one parses
    (the failure is another one). Only on this error path: it parses whole documents."""
    if path.is_file():
        files = [path]
    elif path.is_dir() and not _saved_to_disk(path):
        files = _split_files(path, config, split) or []
    else:
        files = []
    for file in files:
        if file.suffix.lower() != ".json":
            continue
        try:
            with file.open(encoding="utf-8-sig") as f:
                json.load(f)
        except UnicodeDecodeError as e:
            why = f"not UTF-8 text at byte {e.start}"
        except json.JSONDecodeError as e:
            why = f"{e.msg}: line {e.lineno} column {e.colno}"
        except (ValueError, RecursionError) as e:
            why = f"{type(e).__name__}: {str(e)[:120]}"
        else:
            continue
        return DataError(
            f"{file}: not valid JSON ({why}): the file is damaged or cut short; restore or download it "
            "again (one JSON document, or one JSON object a line)"
        )
    return None


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
            damaged = _damaged_json(path, config, split)
            if damaged is not None:
                raise damaged from None
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


def dropped_summary(dropped: dict[str, int], first: dict[str, int | str], unit: str = "row") -> str:
    """``"bad_json 1 (first: line 3), no_answer 2 (first: line 5)"`` (``first: data/b.jsonl:3`` in a folder's
    files), or ``"none"``."""
    parts = [
        f"{k} {v}" + (f" (first: {where_label(unit, first[k])})" if k in first else "")
        for k, v in sorted(dropped.items())
    ]
    return ", ".join(parts) or "none"


def warn_dropped(
    logger: logging.Logger,
    name: str,
    what: str,
    rows_in: int,
    dropped: dict[str, int],
    first: dict[str, int | str],
    unit: str = "row",
) -> None:
    """One warning for a data stage's dropped rows (``"<name>: 3 of 40 <what> dropped: <dropped_summary>"``);
    nothing when none was dropped."""
    if dropped:
        logger.warning(
            "%s: %d of %d %s dropped: %s", name, sum(dropped.values()), rows_in, what,
            dropped_summary(dropped, first, unit),
        )  # fmt: skip
