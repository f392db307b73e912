"""Secrets never leave the environment: set unique secrets in every place the brain config takes
them, materialise a graph on every local backend through Dagster (and a failing run against
unreachable servers), print the config, then grep every file written (DuckDB, Parquet, the
Dagster instance: SQLite and its compressed blobs, compute logs) and the captured output."""

from __future__ import annotations

import json
import socket
import sqlite3
import sys
import uuid
import zlib
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from dagster_brain.cli import main as brain_cli
from dagster_brain.config import reset_brain_config
from dagster_brain.definitions import build_defs
from dagster_brain.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from pinecone_stub import PineconeStub  # noqa: E402

BACKENDS = ("sklearn", "qdrant", "milvus", "lancedb", "pinecone")
FAILING = ("qdrant", "milvus", "pinecone")  # phase 2: unreachable / refused servers


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_project(root: Path, backends: tuple[str, ...]) -> tuple[Path, Path]:
    """Nine images, precomputed 8-d embeddings, one similarity index per backend."""
    rng = np.random.default_rng(0)
    folder = root / "images"
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / cls / f"{i}.png")
    data = root / "data"
    data.mkdir()
    np.save(data / "vectors.npy", rng.normal(size=(8, 8)).astype(np.float32))
    runs = [
        {
            "brain_key": f"sim_{b}",
            "kind": "similarity",
            "dataset": "pets",
            "embeddings": "emb",
            "backend": b,
        }
        for b in backends
    ]
    keys = root / "brain_keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "datasets": [
                    {"name": "pets", "source": {"type": "image_folder", "path": str(folder)}}
                ],
                "embeddings": [
                    {"key": "emb", "dataset": "pets", "source": "array", "path": "vectors.npy"}
                ],
                "brain_runs": runs,
            }
        )
    )
    return keys, data


PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}  # as tests/test_distributed.py


def postgres_db() -> str | None:
    """A fresh PostgreSQL database (its name), or None when PostgreSQL cannot be used."""
    try:
        import dagster_postgres  # noqa: F401
        import psycopg2
    except ImportError:
        return None
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=3, **PG)
    except psycopg2.OperationalError:
        return None
    name = f"brain_secrets_{uuid.uuid4().hex[:12]}"
    admin.autocommit = True  # CREATE DATABASE cannot run in a transaction
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return name


def drop_postgres_db(name: str) -> None:
    import psycopg2

    admin = psycopg2.connect(dbname="postgres", **PG)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def postgres_texts(name: str) -> list[bytes]:
    """Every value in every table of a PostgreSQL database, compressed blobs decompressed."""
    import psycopg2

    conn = psycopg2.connect(dbname=name, **PG)
    out: list[bytes] = []
    with conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        for (table,) in cur.fetchall():
            cur.execute(f'SELECT * FROM "{table}"')
            for row in cur.fetchall():
                out += _values(row)
    conn.close()
    return out


def _values(row) -> list[bytes]:
    out: list[bytes] = []
    for value in row:
        if isinstance(value, memoryview):
            value = value.tobytes()
        if isinstance(value, bytes):
            out.append(value)
            try:
                out.append(zlib.decompress(value))
            except zlib.error:
                pass
        elif value is not None:
            out.append(str(value).encode())
    return out


def temp_instance(home: Path, postgres: str | None = None) -> dg.DagsterInstance:
    """A Dagster instance on disk: SQLite storage (or PostgreSQL database ``postgres``) and
    compute logs under ``home``."""
    home.mkdir(parents=True)
    storage = str(home / "storage")
    url = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{postgres}"
    (home / "dagster.yaml").write_text(
        yaml.safe_dump(
            {
                "storage": (
                    {"postgres": {"postgres_url": url}}
                    if postgres
                    else {"sqlite": {"base_dir": storage}}
                ),
                "local_artifact_storage": {
                    "module": "dagster._core.storage.root",
                    "class": "LocalArtifactStorage",
                    "config": {"base_dir": storage},
                },
                "compute_logs": {
                    "module": "dagster._core.storage.local_compute_log_manager",
                    "class": "LocalComputeLogManager",
                    "config": {"base_dir": str(home / "compute_logs")},
                },
                "telemetry": {"enabled": False},
            }
        )
    )
    return dg.DagsterInstance.from_config(str(home))


def sqlite_texts(path: Path) -> list[bytes]:
    """Every value in a SQLite file, compressed blobs (Dagster's snapshots) decompressed."""
    out: list[bytes] = []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                out += _values(row)
    except sqlite3.DatabaseError:
        pass  # not a SQLite file
    finally:
        conn.close()
    return out


def leaks(secrets: dict[str, str], haystacks: dict[str, bytes]) -> list[str]:
    """'where: which secret' for every hit (bytes, case-sensitive)."""
    return [
        f"{where}: {name}"
        for where, blob in haystacks.items()
        for name, secret in secrets.items()
        if secret.encode() in blob
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def instance_db(request):
    """The Dagster instance's storage: SQLite files, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    name = postgres_db()
    if name is None:
        pytest.skip(f"PostgreSQL on {PG['host']}:{PG['port']} (dagster-postgres) is not usable")
    try:
        yield name
    finally:
        drop_postgres_db(name)


def test_no_secret_reaches_a_file_a_log_or_the_console(tmp_path, monkeypatch, capfd, instance_db):
    secrets = {
        name: f"S3cr3t-{name}-{uuid.uuid4().hex}"
        for name in (
            "qdrant_url",
            "qdrant_api_key",
            "milvus_uri",
            "milvus_token",
            "milvus_password",
            "pinecone_api_key",
            "pinecone_host",
            "pinecone_query",
            "lancedb_api_key",
        )
    }
    keys, data = make_project(tmp_path, BACKENDS)
    instance = temp_instance(tmp_path / "dagster_home", instance_db)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    user_config = tmp_path / "user" / "brain_config.json"  # not grepped: the secrets' home
    user_config.parent.mkdir()
    monkeypatch.setenv("BRAIN_CONFIG_PATH", str(user_config))
    monkeypatch.setenv("BRAIN_DATA_DIR", str(data))
    env = {
        "BRAIN_SIMILARITY_QDRANT_API_KEY": secrets["qdrant_api_key"],
        "BRAIN_SIMILARITY_MILVUS_TOKEN": secrets["milvus_token"],
        "BRAIN_SIMILARITY_MILVUS_PASSWORD": secrets["milvus_password"],
        "BRAIN_SIMILARITY_MILVUS_TIMEOUT": "3",
        "BRAIN_SIMILARITY_PINECONE_API_KEY": secrets["pinecone_api_key"],
        "BRAIN_SIMILARITY_LANCEDB_API_KEY": secrets["lancedb_api_key"],
    }
    console: dict[str, bytes] = {}
    try:
        with PineconeStub(api_key=secrets["pinecone_api_key"]) as stub:
            # phase 1: every backend builds its index, the secrets reach the clients
            stub_url = stub.url
            host = stub.url.replace("http://", f"http://brain:{secrets['pinecone_host']}@")
            for var, value in {**env, "BRAIN_SIMILARITY_PINECONE_HOST": host}.items():
                monkeypatch.setenv(var, value)
            reset_brain_config()
            defs = build_defs(keys, data)
            result = dg.materialize(list(defs.assets), resources=defs.resources, instance=instance)
            assert result.success
            store = Store(data)
            for b in BACKENDS:
                assert len(store.load_results("pets", f"sim_{b}")) == 8
            pine = store.get_run("pets", "sim_pinecone")
            # the stub accepted the secret key; the host is kept, its password masked
            assert pine.upstream["backend"]["host"] == stub.url.replace("http://", "http://****@")
            assert stub.indexes  # the index lives on the stub
            config_out = CliRunner().invoke(brain_cli, ["config"])
            assert config_out.exit_code == 0, config_out.output
            printed = json.loads(config_out.stdout)["similarity_backends"]
            assert printed["pinecone"]["host"] == stub.url.replace("http://", "http://****@")
            console["brain config"] = config_out.output.encode()

            # phase 2: servers that cannot be reached (or refuse the host) fail the runs
            port = closed_port()
            phase2 = {
                "BRAIN_SIMILARITY_QDRANT_URL": (
                    f"http://admin:{secrets['qdrant_url']}@127.0.0.1:{port}"
                ),
                "BRAIN_SIMILARITY_PINECONE_HOST": (
                    f"{stub.url}/?api_key={secrets['pinecone_query']}"
                ),
            }
            for var, value in phase2.items():
                monkeypatch.setenv(var, value)
            # the user's JSON config file is the other place a secret may live
            milvus_uri = f"http://root:{secrets['milvus_uri']}@127.0.0.1:{port}"
            user_config.write_text(
                json.dumps({"similarity_backends": {"milvus": {"uri": milvus_uri}}})
            )
            reset_brain_config()
            keys2, _ = make_project(tmp_path / "failing", FAILING)
            keys.write_text(keys2.read_text())  # same data dir, the failing backends only
            defs = build_defs(keys, data)
            failed = dg.materialize(
                list(defs.assets),
                resources=defs.resources,
                instance=instance,
                raise_on_error=False,
            )
            assert not failed.success
            failures = {
                e.step_key: e.event_specific_data.error.to_string()
                for e in failed.all_events
                if e.event_type_value == "STEP_FAILURE"
            }
            assert set(failures) == {f"pets__brain__sim_{b}" for b in FAILING}
            # the backends were built with the secret URLs: the messages name them, masked
            masked = f"127.0.0.1:{port}"
            assert f"'qdrant' at http://****@{masked}" in failures["pets__brain__sim_qdrant"]
            assert f"'milvus' at http://****@{masked}" in failures["pets__brain__sim_milvus"]
            assert "?api_key=****" in failures["pets__brain__sim_pinecone"]
            config_out = CliRunner().invoke(brain_cli, ["config"])
            printed = json.loads(config_out.stdout)["similarity_backends"]
            assert printed["qdrant"]["url"] == f"http://****@{masked}"
            assert printed["qdrant"]["api_key"].startswith("****")
            console["brain config (phase 2)"] = config_out.output.encode()
    finally:
        reset_brain_config()
    out, err = capfd.readouterr()
    console["stdout"], console["stderr"] = out.encode(), err.encode()

    haystacks = dict(console)
    files = [
        p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".png" and p != user_config
    ]
    assert any(p.suffix == ".duckdb" for p in files)
    assert any(p.suffix == ".parquet" for p in files)
    home = tmp_path / "dagster_home"
    if instance_db is None:
        assert any(p.suffix == ".db" for p in home.rglob("*"))  # runs, event logs
    else:
        rows = postgres_texts(instance_db)
        assert any(b"STEP_FAILURE" in r for r in rows)  # the runs' events are there
        haystacks.update({f"postgres#{i}": r for i, r in enumerate(rows)})
    logs = [p for p in (home / "compute_logs").rglob("*") if p.is_file()]
    assert logs  # the steps' captured output is on disk
    for path in files:
        haystacks[str(path.relative_to(tmp_path))] = path.read_bytes()
        if path.suffix == ".db" and home in path.parents:
            for i, text in enumerate(sqlite_texts(path)):
                haystacks[f"{path.relative_to(tmp_path)}#{i}"] = text
    assert leaks(secrets, haystacks) == []
    # the grep reads where the secrets would be: the masked URLs are in the instance's event
    # log, the store's run records and the step's compute log
    masked_url = f"http://****@127.0.0.1:{port}".encode()
    instance_rows = {k: v for k, v in haystacks.items() if k.startswith(("postgres#", "dagster"))}
    assert any(masked_url in blob for blob in instance_rows.values())
    assert any(masked_url in blob for k, blob in haystacks.items() if "compute_logs" in k)
    stub_host = stub_url.replace("http://", "http://****@").encode()
    assert stub_host in haystacks["data/brain.duckdb"] or any(
        stub_host in blob for k, blob in haystacks.items() if k.endswith("sim_pinecone.parquet")
    )
    # the check can see a secret: the YAML-free env is the only place they are
    assert leaks(secrets, {"env": json.dumps(env).encode()})


def test_yaml_refuses_credentials_inside_backend_params(tmp_path):
    from dagster_brain.specs import SpecError, parse_specs

    base = {
        "datasets": [{"name": "pets", "source": {"type": "image_folder", "path": "x"}}],
        "embeddings": [{"key": "emb", "dataset": "pets"}],
    }
    run = {"brain_key": "sim", "kind": "similarity", "dataset": "pets", "embeddings": "emb"}
    for backend, params, var in [
        ("qdrant", {"url": "http://admin:PASS@host:6333"}, "BRAIN_SIMILARITY_QDRANT_URL"),
        ("pinecone", {"host": "https://p.io?api_key=K"}, "BRAIN_SIMILARITY_PINECONE_HOST"),
    ]:
        entry = {**run, "backend": backend, "backend_params": params}
        with pytest.raises(SpecError) as err:
            parse_specs({**base, "brain_runs": [entry]})
        text = str(err.value)
        assert "'sim'" in text and repr(list(params)) in text and var in text
        assert "PASS" not in text and "=K" not in text
    ok = {**run, "backend": "qdrant", "backend_params": {"url": "http://host:6333"}}
    assert parse_specs({**base, "brain_runs": [ok]}).brain_runs[0].backend_params["url"]
