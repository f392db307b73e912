"""What every part of the store stands on: the data directory, connections, transactions,
read-only queries and Parquet copies."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from dagster_brain.store import connection, mirror
from dagster_brain.store.connection import Transaction
from dagster_brain.store.schema import migrate


class StoreCore:
    """One data directory: ``brain.duckdb`` (the truth) and ``parquet/`` (copies)."""

    def __init__(self, data_dir: str | os.PathLike, lock_timeout_s: float = 120.0):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.db_path = self.data_dir / "brain.duckdb"
        self.parquet_dir = self.data_dir / "parquet"
        self.lock_timeout_s = lock_timeout_s
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.connect() as conn:
            migrate(conn)  # reads the schema version; writes only when it is behind

    def __repr__(self) -> str:
        return f"Store({str(self.data_dir)!r})"

    def connect(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits while another process holds the file lock."""
        return connection.connect(self.db_path, self.lock_timeout_s)

    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """One transaction (its own connection and pending Parquet copies): everything
        inside commits together or not at all; see :func:`connection.transaction`."""
        return connection.transaction(self.db_path, self.lock_timeout_s)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run read-only SQL and return a DataFrame."""
        with self.connect() as conn:
            return conn.execute(sql, params or []).df()

    # -- Parquet copies -------------------------------------------------------------------

    def _parquet_path(self, dataset: str, name: str) -> Path:
        return mirror.parquet_path(self.parquet_dir, dataset, name)

    def parquet_path(self, dataset: str, name: str) -> Path:
        """Where the Parquet copy of ``samples``, ``embeddings/<key>`` or ``results/<key>`` is."""
        return self._parquet_path(dataset, name)

    def _mirror(
        self,
        tx: Transaction,
        dataset: str,
        name: str,
        select_sql: str,
        params: Sequence[Any] | None = None,
    ) -> None:
        """Write a Parquet copy inside the open transaction; renamed after it commits."""
        mirror.write_copy(tx, self._parquet_path(dataset, name), select_sql, params)
