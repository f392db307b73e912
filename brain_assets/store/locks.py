"""One run per brain key at a time: a row in ``brain_locks``, kept alive by a heartbeat.

A lock whose holder died is taken over, with a warning naming that holder: at once on this host
when its pid is gone, and from any host when its heartbeat is older than :data:`LOCK_STALE_S`
whatever its pid is now (a pid may have been reused by another process).
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

# A run holding a brain key refreshes its lock this often; a lock whose heartbeat is older than
# LOCK_STALE_S belongs to a process that died or hangs, and is taken over.
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


def heartbeat_age_s(row: tuple, now) -> float:
    """Seconds since the last heartbeat of a lock row (holder, pid, host, since, beat)."""
    return (now - row[4]).total_seconds()


def takeover_reason(row: tuple, host: str, now) -> str | None:
    """Why the lock ``row`` can be taken over (None: its holder may still be running)."""
    age = heartbeat_age_s(row, now)
    if age > LOCK_STALE_S:  # whatever the pid is now: it may have been reused
        return f"its last heartbeat is {age:.0f} s old (stale after {LOCK_STALE_S:.0f} s)"
    if row[2] == host and not pid_alive(row[1]):
        return "that process is gone"
    return None


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
        now = utcnow()
        if row is not None:
            why = takeover_reason(row, host, now)
            if why is None:
                return row
            _LOG.warning(
                "brain key %r on %r: taking over the lock of %s (pid %s on %s, since %s): %s",
                brain_key,
                dataset,
                row[0],
                row[1],
                row[2],
                row[3],
                why,
            )
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
            age = heartbeat_age_s(row, utcnow())
            raise StoreError(
                f"brain key {brain_key!r} on {dataset!r} is being computed by {row[0]} "
                f"(pid {row[1]} on {row[2]}, since {row[3]}, last heartbeat {age:.0f} s ago); "
                "wait for it to finish (a lock whose heartbeat stops is taken over after "
                f"{LOCK_STALE_S:.0f} s)"
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
