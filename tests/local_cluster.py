"""PostgreSQL + Redis + Celery workers on this machine, for the distributed test and benchmark.

Everything here is real: a fresh PostgreSQL database (dropped afterwards), an empty Redis
database claimed by a key (flushed afterwards), and workers started by
``scripts/distributed.sh workers N`` in their own process groups (stopped even on failure).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS = ("127.0.0.1", 6379)


class ClusterError(RuntimeError):
    """The services or the workers could not be started."""


def unreachable() -> str | None:
    """Why the services cannot be used (None: both answer)."""
    try:
        import psycopg2
        import redis
    except ImportError as err:
        return f"the distributed extra is not installed ({err})"
    try:
        psycopg2.connect(dbname="postgres", connect_timeout=3, **PG).close()
    except psycopg2.OperationalError as err:
        return f"PostgreSQL on {PG['host']}:{PG['port']} is not reachable: {err}"
    try:
        redis.Redis(*REDIS, socket_connect_timeout=3).ping()
    except redis.RedisError as err:
        return f"Redis on {REDIS[0]}:{REDIS[1]} is not reachable: {err}"
    return None


@contextmanager
def pg_database(prefix: str = "brain_test") -> Iterator[str]:
    """A fresh PostgreSQL database (its SQLAlchemy URL), dropped at the end."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(dbname="postgres", **PG)
    admin.autocommit = True  # CREATE / DROP DATABASE cannot run in a transaction
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def redis_database() -> Iterator[int]:
    """An empty Redis database claimed for this caller (parallel callers claim others)."""
    import redis

    token = f"brain_claim_{uuid.uuid4().hex}"
    count = int(redis.Redis(*REDIS).config_get("databases").get("databases", 16))
    for db in random.sample(range(1, count), count - 1):
        client = redis.Redis(*REDIS, db=db)
        if client.dbsize() == 0 and client.set("brain_test_claim", token, nx=True, ex=3600):
            try:
                yield db
            finally:
                client.flushdb()  # it was empty when claimed: every key in it is ours
            return
    raise ClusterError(f"no empty Redis database among 1..{count - 1} to claim for Celery")


def cluster_env(
    home: Path, data_dir: Path, keys_yaml: Path, pg_url: str, redis_db: int, tag: str
) -> dict[str, str]:
    """The environment of ``scripts/distributed.sh`` for one cluster of its own."""
    broker = f"redis://{REDIS[0]}:{REDIS[1]}/{redis_db}"
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "BRAIN_DISTRIBUTED_HOME": str(home),
        "BRAIN_DAGSTER_STORAGE_DIR": str(home / "storage"),
        "BRAIN_DATA_DIR": str(data_dir),
        "BRAIN_BRAIN_KEYS_PATH": str(keys_yaml),
        "BRAIN_CONFIG_PATH": str(home.parent / "no_brain_config.json"),
        "BRAIN_PG_URL": pg_url,
        "BRAIN_CELERY_BROKER": broker,
        "BRAIN_CELERY_BACKEND": broker,
        "BRAIN_CELERY_QUEUE": f"brain_test_{tag}",
        "BRAIN_WORKER_NAME": f"bt{tag}",
    }


@dataclass
class Workers:
    """Running workers: their node names, logs folder and process groups."""

    names: list[str]
    logs: Path
    pgids: dict[str, int]
    script: subprocess.Popen


@contextmanager
def workers(env: dict[str, str], n: int = 2, *args: str) -> Iterator[Workers]:
    """``n`` Celery workers started by ``scripts/distributed.sh workers`` (``args``: more
    worker options, e.g. ``--pool=solo``), ready when yielded, stopped at the end."""
    import dagster as dg

    home = Path(env["BRAIN_DISTRIBUTED_HOME"])
    names = [f"{env['BRAIN_WORKER_NAME']}_{i}" for i in range(1, n + 1)]
    logs = home / "logs"
    # Tables first, so the workers do not race to create them in the empty database.
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((ROOT / "deploy/dagster.distributed.yaml").read_text())
    saved = {v: os.environ.get(v) for v in ("BRAIN_PG_URL", "BRAIN_DAGSTER_STORAGE_DIR")}
    os.environ.update({v: env[v] for v in saved})
    try:
        dg.DagsterInstance.from_config(str(home)).dispose()
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value

    with open(home.parent / "workers.out", "wb") as out:
        script = subprocess.Popen(
            ["bash", "scripts/distributed.sh", "workers", str(n), *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed below
        )
    try:
        deadline = time.monotonic() + 60
        while not all(_ready(logs / f"{name}.log") for name in names):
            if script.poll() is not None or time.monotonic() > deadline:
                raise ClusterError("Celery workers did not start:\n" + tails(home.parent, logs))
            time.sleep(0.5)
        pgids = {name: int((logs / f"{name}.pgid").read_text()) for name in names}
        yield Workers(names, logs, pgids, script)
    finally:
        _stop(script, logs)


def _ready(log: Path) -> bool:
    return log.exists() and " ready." in log.read_text(errors="replace")


def tails(where: Path, logs: Path) -> str:
    """The end of the workers' script output and of each worker's log."""
    files = [where / "workers.out", *sorted(logs.glob("*.log"))]
    return "\n".join(
        f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}" for f in files if f.exists()
    )


def _stop(script: subprocess.Popen, logs: Path) -> None:
    """SIGTERM the script (its trap stops the workers), then SIGKILL whatever is left."""
    groups = [int(p.read_text()) for p in logs.glob("*.pgid")]
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        for pgid in [script.pid, *groups]:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (script.poll() is None or any(map(alive, groups))):
            time.sleep(0.2)
    script.wait(timeout=5)


def alive(pgid: int) -> bool:
    """Whether a process group has a member (the script reaps its workers when they exit)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def pg_rows(pg_url: str, sql: str, params=()) -> list[tuple]:
    """Rows of a query on the cluster's PostgreSQL database."""
    import psycopg2

    db = pg_url.rsplit("/", 1)[1]
    conn = psycopg2.connect(dbname=db, **PG)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def events(pg_url: str, run_id: str, event_type: str) -> list:
    """A run's event-log entries of one type, in order."""
    import dagster as dg
    from dagster._core.events.log import EventLogEntry

    rows = pg_rows(
        pg_url,
        "SELECT event FROM event_logs WHERE run_id = %s AND dagster_event_type = %s ORDER BY id",
        (run_id, event_type),
    )
    return [dg.deserialize_value(row[0], EventLogEntry) for row in rows]


def step_workers(pg_url: str, run_id: str) -> dict[str, str]:
    """Each step of a run and the worker node name (without host) that ran it."""
    out = {}
    for entry in events(pg_url, run_id, "ENGINE_EVENT"):
        meta = entry.dagster_event.engine_event_data.metadata
        if "Celery worker" in meta:
            out[entry.step_key] = meta["Celery worker"].value.split("@")[0]
    return out
