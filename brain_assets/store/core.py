"""What every part of the store stands on: the data directory, connections, transactions,
read-only queries and Parquet copies."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from dagster_brain.store import connection, mirror
from dagster_brain.store.connection import Transaction
from dagster_brain.store.errors import StoreError, StoreReadOnly
from dagster_brain.store.schema import SCHEMA_VERSION, migrate, schema_version

DB_NAME = "brain.duckdb"


def has_parquet_copies(parquet_dir: Path) -> bool:
    """Whether a store's Parquet copies folder holds any copy."""
    return parquet_dir.is_dir() and next(parquet_dir.glob("*/**/*.parquet"), None) is not None


class StoreMissing(StoreError):
    """``brain.duckdb`` is gone but its Parquet copies are there: refuse to start empty."""


def writable(data_dir: Path, db_path: Path) -> bool:
    """Whether this process may write the store's folder and file."""
    return os.access(data_dir, os.W_OK) and os.access(db_path, os.W_OK)


def pins(method: Callable) -> Callable:
    """A store method that runs with the store's file pinned (see :meth:`StoreCore.pinned`):
    for methods made of several short statements."""

    @functools.wraps(method)
    def pinned_method(self, *args, **kwargs):
        with self.pinned():
            return method(self, *args, **kwargs)

    return pinned_method


class StoreCore:
    """One data directory: ``brain.duckdb`` (the truth) and ``parquet/`` (copies)."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        lock_timeout_s: float = 120.0,
        memory_limit: str = connection.DEFAULT_MEMORY_LIMIT,
    ):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.memory_limit = memory_limit
        self.db_path = self.data_dir / DB_NAME
        self.parquet_dir = self.data_dir / "parquet"
        self.lock_timeout_s = lock_timeout_s
        if not self.db_path.exists() and has_parquet_copies(self.parquet_dir):
            # a new empty store here would hide the data the copies hold
            raise StoreMissing(
                f"{self.data_dir} has Parquet copies of a store but no {DB_NAME}; rebuild it "
                f"with `brain restore --data-dir {self.data_dir}` (or point --data-dir / "
                "BRAIN_DATA_DIR at an empty folder for a new store)"
            )
        # a store that cannot be written (a read-only mount) is opened for reading only
        self.read_only = self.db_path.exists() and not writable(self.data_dir, self.db_path)
        if self.read_only:
            with self.connect() as conn:
                if schema_version(conn) < SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.db_path} is read-only and its schema (version "
                        f"{schema_version(conn)}) is older than this version of dagster-brain "
                        f"reads ({SCHEMA_VERSION}); open it once where it can be written"
                    )
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.connect() as conn:
            migrate(conn)  # reads the schema version; writes only when it is behind

    def __repr__(self) -> str:
        return f"Store({str(self.data_dir)!r})"

    def connect(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits while another process holds the file lock."""
        return connection.connect(
            self.db_path, self.lock_timeout_s, self.read_only, self.memory_limit
        )

    def pinned(self) -> contextlib.AbstractContextManager[None]:
        """Keep ``brain.duckdb`` open while inside, so the connections opened meanwhile do
        not open the file again; other processes wait meanwhile (see
        :func:`connection.pinned`: pin short, store-bound work only)."""
        return connection.pinned(
            self.db_path, self.lock_timeout_s, self.read_only, self.memory_limit
        )

    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """One transaction (its own connection and pending Parquet copies): everything
        inside commits together or not at all; see :func:`connection.transaction`."""
        if self.read_only:
            raise StoreReadOnly(self.data_dir)
        return connection.transaction(self.db_path, self.lock_timeout_s, self.memory_limit)

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
        """Write a Parquet copy inside the open transaction; renamed after it commits.

        The records that give a copy its meaning go with it (see :func:`mirror.records_of`):
        a run's record with its results, an embeddings key's metadata with its vectors, the
        labels with the samples, so ``brain restore`` can rebuild the store from the copies.
        """
        mirror.write_copy(tx, self._parquet_path(dataset, name), select_sql, params)
        self._mirror_records(tx, dataset, name)

    def _mirror_records(self, tx: Transaction, dataset: str, name: str) -> None:
        for record, sql, args in mirror.records_of(dataset, name):
            mirror.write_copy(tx, self._parquet_path(dataset, record), sql, args, record=True)

    def _mirror_added(
        self,
        tx: Transaction,
        dataset: str,
        name: str,
        select_sql: str,
        params: Sequence[Any],
        added_sql: str,
        added_params: Sequence[Any],
    ) -> None:
        """Like :meth:`_mirror` when the table only gained the rows of ``added_sql`` since
        its copy was written: those rows are appended to the copy as a part (see
        :func:`mirror.append_copy`), or the copy is rewritten where it cannot take one."""
        if mirror.append_copy(tx, self._parquet_path(dataset, name), added_sql, added_params):
            self._mirror_records(tx, dataset, name)
        else:
            self._mirror(tx, dataset, name, select_sql, params)

    def refresh_copy(self, dataset: str, name: str, select_sql: str, params=None) -> Path:
        """Rewrite one Parquet copy (and its records) from the DuckDB tables now."""
        with self.transaction() as tx:
            self._mirror(tx, dataset, name, select_sql, params)
        return self._parquet_path(dataset, name)
