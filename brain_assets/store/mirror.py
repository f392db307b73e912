"""Parquet copies of store tables, written atomically beside the DuckDB file.

A copy is written to a temporary file inside the open transaction and renamed into place
only after that transaction commits (see :class:`~dagster_brain.store.connection.Transaction`).
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


def write_copy(
    tx: Transaction, path: Path, select_sql: str, params: Sequence[Any] | None = None
) -> None:
    """Write the rows of ``select_sql`` (values as ``params``) to ``path`` when ``tx``
    commits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{random.randrange(1 << 30)}.tmp")
    # Arrow + pyarrow's writer: about twice as fast as COPY for vector columns
    try:
        pq.write_table(tx.sql(select_sql, params).to_arrow_table(), tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tx.replace_after_commit(tmp, path)


def remove_tree(path: Path) -> None:
    """Remove a file or a directory tree, if it is there."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
