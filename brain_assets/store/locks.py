"""One run per brain key at a time: a row in ``brain_locks``, kept alive by a heartbeat.

A lock whose holder died is taken over: on this host when its pid is gone, from another host
(a worker) when its heartbeat is older than :data:`LOCK_STALE_S`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from dagster_brain.names import check_name
from dagster_brain.store.errors import StoreError
from dagster_brain.store.records import utcnow

if TYPE_CHECKING:
    from dagster_brain.store.core import StoreCore

_LOG = logging.getLogger("dagster_brain")

# A run holding a brain key refreshes its lock this often; a lock from another host whose
# heartbeat is older than LOCK_STALE_S belongs to a worker that died, and is taken over.
LOCK_HEARTBEAT_S = 30.0
LOCK_STALE_S = 300.0
# After this many missed beats in a row the holder logs a warning (and again at every
# further multiple): at 30 s a beat, 3 misses leave 210 s before the lock looks stale.
LOCK_MISSES_LOGGED = 3


def pid_alive(pid: int) -> bool:
    """Whether a process id is running on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _try_acquire(
    store: StoreCore, dataset: str, brain_key: str, holder: str, host: str, pid: int
) -> tuple | None:
    """Take the lock if it is free; otherwise the holder's row (holder, pid, host, since)."""
    with store.transaction() as tx:
        rows = tx.execute(
            "SELECT holder, pid, host, acquired_at, coalesce(heartbeat_at, acquired_at) "
            "FROM brain_locks WHERE dataset = ? AND brain_key = ?",
            [dataset, brain_key],
        ).fetchall()
        row = rows[0] if rows else None
        free = row is None or (
            not pid_alive(row[1])
            if row[2] == host
            else (utcnow() - row[4]).total_seconds() > LOCK_STALE_S
        )
        if not free:
            return row
        now = utcnow()
        tx.execute(
            "INSERT OR REPLACE INTO brain_locks "
            "(dataset, brain_key, holder, pid, host, acquired_at, heartbeat_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [dataset, brain_key, holder, pid, host, now, now],
        )
    return None


def _beat_until(done: threading.Event, beat: Callable[[], None], what: str) -> None:
    """Call ``beat`` every :data:`LOCK_HEARTBEAT_S` until ``done``; log repeated misses."""
    misses = 0
    while not done.wait(LOCK_HEARTBEAT_S):
        try:
            beat()
        except Exception as err:  # a missed beat only shortens the lock's grace
            misses += 1
            if misses % LOCK_MISSES_LOGGED == 0:
                _LOG.warning(
                    "%s: %d heartbeats missed in a row (last: %s); another host may take the "
                    "lock over once it is %.0f s old",
                    what,
                    misses,
                    err,
                    LOCK_STALE_S,
                )
            else:
                _LOG.debug("%s: heartbeat missed: %s", what, err)
        else:
            if misses >= LOCK_MISSES_LOGGED:
                _LOG.warning("%s: heartbeat back after %d misses", what, misses)
            misses = 0


@contextlib.contextmanager
def hold_run_lock(
    store: StoreCore, dataset: str, brain_key: str, holder: str, wait_s: float = 0.0
) -> Iterator[None]:
    """Hold the brain key for one run; see :meth:`Store.run_lock`."""
    check_name(brain_key, "brain key")
    host, pid = socket.gethostname(), os.getpid()
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while (row := _try_acquire(store, dataset, brain_key, holder, host, pid)) is not None:
        if time.monotonic() >= deadline:
            raise StoreError(
                f"brain key {brain_key!r} on {dataset!r} is being computed by {row[0]} "
                f"(pid {row[1]} on {row[2]}, since {row[3]}); wait for it to finish"
            )
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 5.0)

    def beat() -> None:
        with store.connect() as conn:
            conn.execute(
                "UPDATE brain_locks SET heartbeat_at = ? WHERE dataset = ? AND "
                "brain_key = ? AND pid = ? AND host = ?",
                [utcnow(), dataset, brain_key, pid, host],
            )

    done = threading.Event()
    what = f"run lock of brain key {brain_key!r} on {dataset!r}"
    beater = threading.Thread(
        target=_beat_until, args=(done, beat, what), name=f"lock {brain_key}", daemon=True
    )
    beater.start()
    try:
        yield
    finally:
        done.set()
        beater.join()
        with store.connect() as conn:
            conn.execute(
                "DELETE FROM brain_locks WHERE dataset = ? AND brain_key = ? AND pid = ? "
                "AND host = ?",
                [dataset, brain_key, pid, host],
            )
