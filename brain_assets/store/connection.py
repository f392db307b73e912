"""Short-lived DuckDB connections that wait for the file lock, and transactions.

A :class:`Transaction` carries its own connection and the Parquet copies waiting for its
commit, so two transactions on one store (nested, or in two threads) never share either.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb

from dagster_brain.store.errors import StoreError, StoreReadOnly

# What DuckDB says when the file itself is broken (truncated, overwritten, bad blocks), as
# opposed to a busy file lock or a bad query.
_DAMAGE_MARKERS = (
    "not a valid duckdb database file",
    "could not read enough bytes",
    "corrupt database file",
    "does not match stored checksum",
)


# the brain config's store_memory_limit default: the measured peak of writing and reading
# 1M x 512 vectors stays near the vectors' size plus ~1 GB (benchmarks/scale.py)
DEFAULT_MEMORY_LIMIT = "512MB"


# db file -> [the connection holding it open, how many pins hold it] (see pinned)
_PINS: dict[Path, list] = {}
_PINS_LOCK = threading.Lock()


def _forget_pins_in_child() -> None:
    """A forked child does not hold its parent's file locks: it opens the file itself."""
    global _PINS_LOCK
    _PINS.clear()
    _PINS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pins_in_child)


class StoreDamaged(StoreError):
    """``brain.duckdb`` cannot be read: truncated, overwritten or with corrupted blocks."""


def damage_cause(err: BaseException) -> str | None:
    """DuckDB's message when ``err`` says the database file is damaged, else None."""
    if not isinstance(err, duckdb.Error):
        return None
    text = str(err)
    return text if any(m in text.lower() for m in _DAMAGE_MARKERS) else None


def damaged(db_path: Path, cause: str) -> StoreDamaged:
    """The one message for a damaged store file: what, why, what to do."""
    return StoreDamaged(
        f"{db_path.name} is damaged: {cause}; restore with `brain restore --data-dir "
        f"{db_path.parent}` from the Parquet copies"
    )


def open_database(
    db_path: Path,
    lock_timeout_s: float,
    read_only: bool = False,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> duckdb.DuckDBPyConnection:
    """A new connection to the file; waits (with jittered backoff) while another process
    holds the file lock, up to ``lock_timeout_s``. ``read_only``: for a store on a read-only
    mount. ``memory_limit``: DuckDB's buffer memory (beyond it, large writes and scans spill
    to disk); one value per process, as DuckDB shares one instance per file."""
    deadline = time.monotonic() + lock_timeout_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(
                str(db_path), read_only=read_only, config={"memory_limit": memory_limit}
            )
        except duckdb.Error as err:
            cause = damage_cause(err)
            if cause is not None:
                raise damaged(db_path, cause) from err
            busy = isinstance(err, duckdb.IOException) and "lock" in str(err).lower()
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(delay + random.random() * delay)
            delay = min(delay * 2, 2.0)


@contextlib.contextmanager
def connect(
    db_path: Path,
    lock_timeout_s: float,
    read_only: bool = False,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection (see :func:`open_database`), closed on exit."""
    conn = open_database(db_path, lock_timeout_s, read_only, memory_limit)
    try:
        yield conn
    except duckdb.Error as err:
        # a bad block surfaces only when a query reads it: say so wherever that happens
        cause = damage_cause(err)
        if cause is not None:
            raise damaged(db_path, cause) from err
        if read_only and "read-only mode" in str(err):
            raise StoreReadOnly(db_path.parent) from err
        raise
    finally:
        conn.close()


@contextlib.contextmanager
def pinned(
    db_path: Path,
    lock_timeout_s: float,
    read_only: bool = False,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> Iterator[None]:
    """Keep the file open in this process while inside (reentrant, any thread).

    Connections opened meanwhile share the open database instead of opening the file again
    (~13 ms each with DuckDB 2.0, whatever the file's size; well under 1 ms while it is
    open). The file lock is held until the outermost pin ends, so other processes wait for
    it: pin short, store-bound work (a write of several statements, a run's reads or its
    commit), never a model or a graph build.
    """
    key = Path(db_path)
    with _PINS_LOCK:
        held = _PINS.get(key)
        if held is not None:
            held[1] += 1
    if held is None:  # opened outside the lock: it may wait for another process
        conn = open_database(key, lock_timeout_s, read_only, memory_limit)
        with _PINS_LOCK:
            held = _PINS.setdefault(key, [conn, 0])
            held[1] += 1
        if held[0] is not conn:  # another thread pinned it meanwhile
            conn.close()
    try:
        yield
    finally:
        with _PINS_LOCK:
            held[1] -= 1
            if held[1] == 0:
                del _PINS[key]
                held[0].close()


class Transaction:
    """One open DuckDB transaction and the files to move into place once it commits."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        self.renames: list[tuple[Path, Path]] = []
        # the records copied beside those copies (mirror.records_of), moved in with them
        self.record_renames: list[tuple[Path, Path]] = []
        self.removals: list[Path] = []  # folders the new files supersede

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

    def replace_after_commit(self, tmp: Path, final: Path, record: bool = False) -> None:
        """Move ``tmp`` onto ``final`` once the transaction commits; remove it otherwise.
        ``record``: a copy's record (kept in :attr:`record_renames`)."""
        (self.record_renames if record else self.renames).append((tmp, final))

    def remove_after_commit(self, folder: Path) -> None:
        """Remove ``folder`` once the transaction commits and its files are in place."""
        self.removals.append(folder)

    def pending(self) -> list[tuple[Path, Path]]:
        """Every (temporary, final) file waiting for the commit."""
        return [*self.renames, *self.record_renames]


@contextlib.contextmanager
def transaction(
    db_path: Path,
    lock_timeout_s: float,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> Iterator[Transaction]:
    """One transaction: everything inside commits together or not at all.

    Files queued with :meth:`Transaction.replace_after_commit` replace the old ones only after
    the commit, while the connection (and so the store's file lock) is still held: two
    writers' copies land in the order of their commits. On rollback they are removed.
    """
    tx: Transaction | None = None
    try:
        with connect(db_path, lock_timeout_s, memory_limit=memory_limit) as conn:
            tx = Transaction(conn)
            conn.execute("BEGIN TRANSACTION")
            try:
                yield tx
                conn.execute("COMMIT")
            except BaseException:
                # a failed commit may leave no transaction to roll back: the original error
                # (disk full, a constraint) is the one raised, never the rollback's
                with contextlib.suppress(duckdb.Error):
                    conn.execute("ROLLBACK")
                raise
            for tmp, final in tx.pending():
                os.replace(tmp, final)
            for folder in tx.removals:
                shutil.rmtree(folder, ignore_errors=True)
    except BaseException:
        for tmp, _ in tx.pending() if tx is not None else ():
            tmp.unlink(missing_ok=True)
        raise
