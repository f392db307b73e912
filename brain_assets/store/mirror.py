"""Parquet copies of store tables, written atomically beside the DuckDB file.

A copy is written to a temporary file inside the open transaction and renamed into place
only after that transaction commits (see :class:`~dagster_brain.store.connection.Transaction`).

Copies, under ``parquet/<dataset>/``: ``samples``, ``embeddings/<key>``, ``results/<key>``
(and ``results/<key>__<table>``), ``views/<name>``; beside them, in ``records/``, the rows
that describe them: ``dataset``, ``labels`` and ``label_fields`` (with the samples),
``embedding_sets/<key>`` (with the vectors), ``runs/<key>`` (the run record, with its
results), ``saved_views/<name>`` (with the view). Run history and run locks are not copied.

A copy may grow by parts (:func:`append_copy`): ``<name>.parts/<generation>-<i>.parquet``
beside ``<name>.parquet`` hold rows appended after it. A rewrite of the copy starts the next
generation and removes the parts; parts of an earlier generation (a rewrite interrupted
before their removal) are never read. :func:`copy_files` lists the files of a copy.
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
PARTS = ".parts"  # suffix of the folder of the parts appended to a copy
# parts a copy may have before the next append rewrites it whole: bounds the files a reader
# opens (not tuned: any small number keeps appends cheap)
MAX_PARTS = 16
_GENERATION = b"dagster_brain.copy_generation"  # in a copy's Parquet metadata


def parts_dir(path: Path) -> Path:
    """The folder of the parts appended to the copy at ``path``."""
    return path.with_name(path.stem + PARTS)


def generation(path: Path) -> int:
    """The generation a copy's file records (0: none recorded)."""
    meta = pq.read_schema(path).metadata or {}
    return int(meta.get(_GENERATION, b"0"))


def copy_files(path: Path) -> list[Path]:
    """The files that hold the copy at ``path``: the file, then the parts of its generation
    in the order they were appended."""
    folder = parts_dir(path)
    if not folder.is_dir():
        return [path]
    gen, files = generation(path), [path]
    while (part := folder / f"{gen}-{len(files)}.parquet").exists():
        files.append(part)
    return files


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
    commits (``record``: one of :func:`records_of`); parts appended to the old copy are
    removed then."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = parts_dir(path)
    metadata = None
    if folder.is_dir():
        old = generation(path) if path.exists() else 0
        metadata = {_GENERATION: str(old + 1).encode()}
        tx.remove_after_commit(folder)
    tx.replace_after_commit(_write_rows(tx, path, select_sql, params, metadata), path, record)


def append_copy(
    tx: Transaction, path: Path, select_sql: str, params: Sequence[Any] | None = None
) -> bool:
    """Append the rows of ``select_sql`` to the copy at ``path`` as a part, in place when
    ``tx`` commits; False (nothing written) when the copy must be rewritten instead: there is
    none yet, or it has :data:`MAX_PARTS` parts."""
    if not path.exists():
        return False
    files = copy_files(path)
    if len(files) > MAX_PARTS:
        return False
    part = parts_dir(path) / f"{generation(path)}-{len(files)}.parquet"
    part.parent.mkdir(exist_ok=True)
    tx.replace_after_commit(_write_rows(tx, part, select_sql, params), part)
    return True


def _write_rows(
    tx: Transaction,
    path: Path,
    select_sql: str,
    params: Sequence[Any] | None,
    metadata: dict[bytes, bytes] | None = None,
) -> Path:
    """The rows of ``select_sql`` in a temporary file beside ``path``; returns that file."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{random.randrange(1 << 30)}.tmp")
    # Arrow + pyarrow's writer (about twice as fast as COPY for vector columns), streamed:
    # one block of rows in memory at a time, each block a row group
    try:
        reader = tx.sql(select_sql, params).to_arrow_reader(COPY_ROWS)
        schema = reader.schema.with_metadata(metadata) if metadata else reader.schema
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def remove_tree(path: Path) -> None:
    """Remove a file or a directory tree, if it is there."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def remove_copy(parquet_dir: Path, dataset: str, name: str) -> None:
    """Remove a copy and the records written beside it (a deleted run, key or view)."""
    remove_tree(parts_dir(parquet_path(parquet_dir, dataset, name)))
    for copy in [name, *(record for record, _, _ in records_of(dataset, name))]:
        parquet_path(parquet_dir, dataset, copy).unlink(missing_ok=True)
