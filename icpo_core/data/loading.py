"""One loader for hub datasets and local copies: everything goes through ``datasets.load_dataset``.

A hub id and a local file (``data.*.path``) of the same layout take the same path, so the column adapters are
exercised by tests with small local files in the hub datasets' real layouts. Every failure becomes a
:class:`~icpo_core.errors.DataError` naming the dataset or file and what to do.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from icpo_core.errors import DataError

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}


def _builder_for(path: Path) -> str:
    builder = _FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use one of {sorted(_FILE_BUILDERS)}")
    return builder


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
    needed = list(needed)
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {missing} for the {layout} layout; expected {needed}, "
            f"found {ds.column_names}"
        )
