"""Runs launched in a ``brain`` or notebook process end in a final state, even when that
process is killed.

The daemon's run monitoring cannot watch a run executed in the process that launched it (the
CLI's ``brain materialize``, an owned key's ``compute_*``). Each such run is tagged with its
host, pid and the process's start time, and leaves a marker file in the instance directory
while it runs. A run whose process is gone, or whose pid now belongs to a process started at
another time, is marked FAILURE with an engine event saying why: by the next ``brain``
command or asset-owned API call (:func:`fail_dead_marked_runs`, which reads only the marker
files until one is dead), or by :func:`fail_dead_runs` from a sensor or a script.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dagster_brain.store.locks import pid_alive

_LOG = logging.getLogger("dagster_brain")

HOST_TAG = "dagster-brain/host"
PID_TAG = "dagster-brain/pid"
PID_START_TAG = "dagster-brain/pid-start"
# One JSON file per run in progress, in the instance directory (DAGSTER_HOME).
MARKER_DIR = "brain_live_runs"


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as an opaque string (Linux: clock ticks after boot, field
    22 of ``/proc/<pid>/stat``; elsewhere psutil's create time when psutil is installed), or
    None when unknown. A zombie (killed, not yet reaped) counts as gone: ``""``."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            raw = stat.read_text()
        except OSError:
            return ""  # the process is gone
        # field 2 (the command name) may hold spaces and parentheses: split after the last ')'
        fields = raw.rpartition(")")[2].split()
        if not fields or fields[0] in ("Z", "X"):  # field 3: the state
            return ""
        return fields[19]  # field 22
    try:
        import psutil
    except ImportError:
        return None
    try:
        return repr(psutil.Process(pid).create_time())
    except psutil.Error:
        return ""


def liveness_tags() -> dict[str, str]:
    """The tags that name this process as a run's executor."""
    pid = os.getpid()
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(pid),
        PID_START_TAG: process_start(pid) or "",
    }


def why_gone(pid: int, started: str | None) -> str | None:
    """Why process ``pid`` (started at ``started``, as :func:`process_start` said then) no
    longer runs; None while it still does."""
    if pid <= 0 or not pid_alive(pid):
        return "is gone"
    now = process_start(pid)
    if now == "":
        return "is gone"
    if started and now is not None and now != started:
        return f"is gone: pid {pid} now belongs to another process, started later"
    return None


def _marker_dir(instance: Any) -> Path | None:
    """The marker folder of a persistent instance (None for an ephemeral one)."""
    if instance.is_ephemeral:
        return None
    return Path(instance.root_directory) / MARKER_DIR


@contextlib.contextmanager
def marked_run(instance: Any, run_id: str) -> Iterator[None]:
    """Mark run ``run_id`` as executing in this process for the block."""
    folder = _marker_dir(instance)
    path = None
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{run_id}.json"
            path.write_text(json.dumps({"run_id": run_id, **liveness_tags()}))
        except OSError as err:  # a marker only speeds up the next check: the run goes on
            _LOG.debug("no liveness marker for run %s: %s", run_id, err)
            path = None
    try:
        yield
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


def dead_markers(home: str | os.PathLike) -> dict[str, Path]:
    """Run id -> marker file, for each run marked in instance directory ``home`` by a process
    of this host that is gone (reads only the marker files)."""
    folder = Path(home) / MARKER_DIR
    if not folder.is_dir():
        return {}
    host = socket.gethostname()
    dead = {}
    for path in sorted(folder.glob("*.json")):
        try:
            mark = json.loads(path.read_text())
            pid = int(mark[PID_TAG])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours
        if mark.get(HOST_TAG) == host and why_gone(pid, mark.get(PID_START_TAG)) is not None:
            dead[str(mark.get("run_id", path.stem))] = path
    return dead


def fail_dead_runs(instance: Any, run_ids: list[str] | None = None) -> list[str]:
    """Mark FAILURE every unfinished run (queued, starting, started) that a process of this
    host executes in-process and that process is gone; an engine event and the failure say
    why. Only runs with this project's liveness tags are looked at (``run_ids``: only those).
    Returns the lines saying which runs were marked."""
    import dagster as dg

    host = socket.gethostname()
    unfinished = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
    ]
    filters = dg.RunsFilter(statuses=unfinished, tags={HOST_TAG: host}, run_ids=run_ids)
    lines = []
    for run in instance.get_runs(filters=filters):
        try:
            pid = int(run.tags.get(PID_TAG, "0"))
        except ValueError:
            continue
        why = why_gone(pid, run.tags.get(PID_START_TAG))
        if why is None:
            continue
        message = (
            f"process {pid} on {host}, which executed this run, {why} (killed, or out of "
            "memory) and the run had not ended: marked failed by dagster-brain"
        )
        instance.report_engine_event(message, run)
        instance.report_run_failed(run, message)
        lines.append(
            f"Dagster run {run.run_id} ({run.job_name}): its process {pid} {why}; marked failed"
        )
    return lines


def fail_dead_marked_runs(instance: Any) -> list[str]:
    """:func:`fail_dead_runs` for the runs marked in ``instance``'s directory whose process
    is gone; their markers are removed. Cheap when none is."""
    folder = _marker_dir(instance)
    if folder is None:
        return []
    dead = dead_markers(folder.parent)
    if not dead:
        return []
    lines = fail_dead_runs(instance, sorted(dead))
    for path in dead.values():
        path.unlink(missing_ok=True)
    return lines
