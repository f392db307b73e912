"""Short-lived DuckDB connections that wait for the file lock, and transactions.

A :class:`Transaction` carries its own connection and the Parquet copies waiting for its
commit, so two transactions on one store (nested, or in two threads) never share either.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb


@contextlib.contextmanager
def connect(db_path: Path, lock_timeout_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection; waits (with jittered backoff) while another process holds
    the file lock, up to ``lock_timeout_s``."""
    deadline = time.monotonic() + lock_timeout_s
    delay = 0.05
    while True:
        try:
            conn = duckdb.connect(str(db_path))
            break
        except duckdb.IOException as err:
            if "lock" not in str(err).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay + random.random() * delay)
            delay = min(delay * 2, 2.0)
    try:
        yield conn
    finally:
        conn.close()


class Transaction:
    """One open DuckDB transaction and the files to move into place once it commits."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        self.renames: list[tuple[Path, Path]] = []

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> duckdb.DuckDBPyConnection:
        """Run one statement with its values as parameters."""
        return self.conn.execute(sql, params or [])

    def sql(self, sql: str, params: Sequence[Any] | None = None) -> duckdb.DuckDBPyRelation:
        """A relation (for Arrow results) with its values as parameters."""
        return self.conn.sql(sql, params=list(params) if params else None)

    def register(self, name: str, frame: Any) -> None:
        """Make a DataFrame or Arrow table readable as ``name`` inside this transaction."""
        self.conn.register(name, frame)

    def unregister(self, name: str) -> None:
        """Forget a registered frame."""
        self.conn.unregister(name)

    def replace_after_commit(self, tmp: Path, final: Path) -> None:
        """Move ``tmp`` onto ``final`` once the transaction commits; remove it otherwise."""
        self.renames.append((tmp, final))


@contextlib.contextmanager
def transaction(db_path: Path, lock_timeout_s: float) -> Iterator[Transaction]:
    """One transaction: everything inside commits together or not at all.

    Files queued with :meth:`Transaction.replace_after_commit` replace the old ones only after
    the commit, while the connection (and so the store's file lock) is still held: two
    writers' copies land in the order of their commits. On rollback they are removed.
    """
    tx: Transaction | None = None
    try:
        with connect(db_path, lock_timeout_s) as conn:
            tx = Transaction(conn)
            conn.execute("BEGIN TRANSACTION")
            try:
                yield tx
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            for tmp, final in tx.renames:
                os.replace(tmp, final)
    except BaseException:
        for tmp, _ in tx.renames if tx is not None else ():
            tmp.unlink(missing_ok=True)
        raise
