"""Parquet copies of store tables, written atomically beside the DuckDB file.

A copy is written to a temporary file inside the open transaction and renamed into place
only after that transaction commits (see :class:`~dagster_brain.store.connection.Transaction`).

Copies, under ``parquet/<dataset>/``: ``samples``, ``embeddings/<key>``, ``results/<key>``
(and ``results/<key>__<table>``), ``views/<name>``; beside them, in ``records/``, the rows
that describe them: ``dataset``, ``labels`` and ``label_fields`` (with the samples),
``embedding_sets/<key>`` (with the vectors), ``runs/<key>`` (the run record, with its
results), ``saved_views/<name>`` (with the view). Run history and run locks are not copied.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from dagster_brain.store.connection import Transaction


def parquet_path(parquet_dir: Path, dataset: str, name: str) -> Path:
    """Where the copy ``name`` (``samples``, ``embeddings/<key>``...) of a dataset lives."""
    return parquet_dir / dataset / f"{name}.parquet"


RECORDS = "records"
COPY_ROWS = 65_536  # rows per block (and Parquet row group) when writing a copy


def records_of(dataset: str, name: str) -> list[tuple[str, str, list[Any]]]:
    """(copy name, SQL, parameters) of the records written beside the copy ``name``."""
    kind, _, key = name.partition("/")
    if name == "samples":
        return [
            (RECORDS + "/dataset", "SELECT * FROM datasets WHERE dataset = ?", [dataset]),
            (RECORDS + "/labels", "SELECT * FROM labels WHERE dataset = ?", [dataset]),
            (RECORDS + "/label_fields", "SELECT * FROM label_fields WHERE dataset = ?", [dataset]),
        ]
    if kind == "embeddings" and key:
        sql = "SELECT * FROM embedding_sets WHERE dataset = ? AND embeddings_key = ?"
        return [(f"{RECORDS}/embedding_sets/{key}", sql, [dataset, key])]
    if kind == "views" and key:
        sql = "SELECT * FROM saved_views WHERE dataset = ? AND name = ?"
        return [(f"{RECORDS}/saved_views/{key}", sql, [dataset, key])]
    if kind == "results" and key and "__" not in key:
        sql = "SELECT * FROM brain_runs WHERE dataset = ? AND brain_key = ?"
        return [(f"{RECORDS}/runs/{key}", sql, [dataset, key])]
    return []


def write_copy(
    tx: Transaction,
    path: Path,
    select_sql: str,
    params: Sequence[Any] | None = None,
    record: bool = False,
) -> None:
    """Write the rows of ``select_sql`` (values as ``params``) to ``path`` when ``tx``
    commits (``record``: one of :func:`records_of`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{random.randrange(1 << 30)}.tmp")
    # Arrow + pyarrow's writer (about twice as fast as COPY for vector columns), streamed:
    # one block of rows in memory at a time, each block a row group
    try:
        reader = tx.sql(select_sql, params).to_arrow_reader(COPY_ROWS)
        with pq.ParquetWriter(tmp, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tx.replace_after_commit(tmp, path, record=record)


def remove_tree(path: Path) -> None:
    """Remove a file or a directory tree, if it is there."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def remove_copy(parquet_dir: Path, dataset: str, name: str) -> None:
    """Remove a copy and the records written beside it (a deleted run, key or view)."""
    for copy in [name, *(record for record, _, _ in records_of(dataset, name))]:
        parquet_path(parquet_dir, dataset, copy).unlink(missing_ok=True)
