"""Store health: each kind of damage is found by `brain doctor`, named, and (where it can be)
repaired to a state whose answers equal the original's; `brain restore` rebuilds a lost or
damaged brain.duckdb from the Parquet copies."""

import os
import shutil
import socket
import subprocess
import sys
from datetime import timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from brain_env import use_brain_env
from click.testing import CliRunner
from conftest import sample_frame

import dagster_brain as fob
from dagster_brain import doctor
from dagster_brain.doctor_cli import doctor_cmd, restore_cmd
from dagster_brain.similarity import compute
from dagster_brain.similarity.index import IndexIncomplete
from dagster_brain.store import Store, StoreError
from dagster_brain.store.connection import StoreDamaged
from dagster_brain.store.locks import LOCK_STALE_S
from dagster_brain.store.records import utcnow

N, D = 30, 6


@pytest.fixture(autouse=True)
def brain_env(monkeypatch, tmp_path, request):
    use_brain_env(request, monkeypatch, {"BRAIN_CONFIG_PATH": str(tmp_path / "none.json")})


@pytest.fixture(scope="module")
def original(tmp_path_factory, request):
    """A dataset with labels, an embeddings key, a uniqueness run and a similarity index on
    the default (file-backed) backend, built once; returns (data dir, the index's answer)."""
    root = tmp_path_factory.mktemp("original")
    with pytest.MonkeyPatch.context() as mp:
        use_brain_env(request, mp, {"BRAIN_CONFIG_PATH": str(root / "none.json")})
        store = Store(root / "data")
        frame = sample_frame([f"/img/{i}.png" for i in range(N)])
        labels = pd.DataFrame(
            {
                "sample_id": frame["sample_id"],
                "label_id": [f"l{i}" for i in range(N)],
                "label": ["cat" if i % 2 else "dog" for i in range(N)],
            }
        )
        store.write_samples("toy", frame, {"gt": ("classification", ["cat", "dog"], labels)})
        ds = fob.Dataset("toy", store)
        X = np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)
        fob.compute_uniqueness(ds, embeddings=X, brain_key="uniq")
        index = fob.compute_similarity(ds, embeddings=X, brain_key="sim")
        answer = index.sort_by_similarity("s003", k=8).to_frame()
        index.close()
    return store.data_dir, answer


@pytest.fixture
def built(original, tmp_path):
    """A copy of the original store for one test to damage; (store, the index's answer)."""
    src, answer = original
    shutil.copytree(src, tmp_path / "data")
    return Store(tmp_path / "data"), answer


def query(store, k=8):
    index = fob.Dataset("toy", store).load_brain_results("sim")
    try:
        return index.sort_by_similarity("s003", k=k).to_frame()
    finally:
        index.close()


def codes(findings):
    return sorted(f.code for f in findings)


def run(cmd, *args):
    return CliRunner().invoke(cmd, list(args), catch_exceptions=False)


def test_a_healthy_store_has_no_findings(built):
    store, _ = built
    result = run(doctor_cmd, "--data-dir", str(store.data_dir))
    assert result.exit_code == 0 and "healthy" in result.output
    assert doctor.quick_check(store, "toy") == []


def test_deleted_index_file_is_found_and_rebuilt_to_the_same_answers(built):
    store, answer = built
    record = store.get_run("toy", "sim")
    path = store.data_dir / "indexes" / "toy" / f"{record.config['index']['collection']}.parquet"
    path.unlink()
    index = fob.Dataset("toy", store).load_brain_results("sim")
    assert (index.total_index_size, index.missing_size) == (0, N)  # the backend's, not the run's
    index.close()
    with pytest.raises(IndexIncomplete, match="brain doctor --dataset toy --repair"):
        query(store)
    result = run(doctor_cmd, "--data-dir", str(store.data_dir), "--dataset", "toy")
    assert result.exit_code == 1
    assert "index_missing: sklearn collection" in result.output
    assert "holds none of the 30 vectors the run recorded (its file is gone)" in result.output
    assert "brain key 'sim'" in result.output
    assert [f.code for f in doctor.quick_check(store, "toy")] == ["index_missing"]
    fixed = run(doctor_cmd, "--data-dir", str(store.data_dir), "--repair")
    assert fixed.exit_code == 0, fixed.output
    assert "repaired: rebuilt index 'sim' of 'toy'" in fixed.output
    pd.testing.assert_frame_equal(query(store), answer)
    again = store.get_run("toy", "sim")
    assert again.run_id == record.run_id and again.artifacts == record.artifacts


def test_deleted_parquet_copies_are_found_and_rewritten(built):
    store, _ = built
    samples = store.parquet_path("toy", "samples")
    emb = store.parquet_path("toy", "embeddings/sim_embeddings")
    run_record = store.parquet_path("toy", "records/runs/uniq")
    before = pd.read_parquet(samples)
    for p in (samples, emb, run_record):
        p.unlink()
    findings = doctor.examine(store, "toy")
    assert codes(findings) == ["copy_missing"] * 3
    assert {f.path for f in findings} == {str(samples), str(emb), str(run_record)}
    assert all(f.repairable for f in findings)
    report = doctor.doctor(store.data_dir, fix=True)
    assert report.healthy and len(report.repaired) == 3
    pd.testing.assert_frame_equal(pd.read_parquet(samples), before)
    assert len(pd.read_parquet(emb)) == N


def test_a_short_copy_is_found_by_its_row_count(built):
    store, _ = built
    path = store.parquet_path("toy", "results/uniq")
    pd.read_parquet(path).head(3).to_parquet(path)
    (f,) = doctor.quick_check(store, "toy")
    assert f.code == "copy_rows" and f"has 3 rows; DuckDB has {N}" in f.what
    assert f.brain_key == "uniq"
    doctor.repair(store, [f])
    assert len(pd.read_parquet(path)) == N and doctor.examine(store) == []


def test_missing_duckdb_beside_copies_is_refused_then_restored(built, tmp_path):
    store, answer = built
    uniq = store.load_results("toy", "uniq")
    samples = store.samples("toy")
    labels = store.labels("toy", "gt")
    (store.data_dir / "brain.duckdb").unlink()
    with pytest.raises(StoreError, match="no brain.duckdb; rebuild it with `brain restore"):
        Store(store.data_dir)
    assert not (store.data_dir / "brain.duckdb").exists()  # nothing created silently
    assert codes(doctor.check_database(store.data_dir)) == ["db_missing"]
    Store(tmp_path / "brand_new")  # an empty folder still gets a new store
    result = run(restore_cmd, "--data-dir", str(store.data_dir))
    assert result.exit_code == 0, result.output
    assert f"restored toy: {N} samples, {N} labels, 2 embeddings keys, 2 brain runs" in (
        result.output
    )
    assert "not restored: run history and run locks" in result.output
    back = Store(store.data_dir)
    pd.testing.assert_frame_equal(back.samples("toy"), samples)
    pd.testing.assert_frame_equal(back.labels("toy", "gt"), labels)
    pd.testing.assert_frame_equal(back.load_results("toy", "uniq"), uniq)
    assert back.get_run("toy", "uniq").info() == store.get_run("toy", "uniq").info()
    pd.testing.assert_frame_equal(query(back), answer)
    assert doctor.examine(back) == []


def test_truncated_duckdb_is_one_clear_finding_and_restore_brings_it_back(built):
    store, answer = built
    db = store.data_dir / "brain.duckdb"
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 2)
    result = run(doctor_cmd, "--data-dir", str(store.data_dir))
    assert result.exit_code == 1
    assert "db_damaged: brain.duckdb is damaged: IO Error: Could not read enough bytes" in (
        result.output
    )
    assert "restore it with `brain restore` from the Parquet copies" in result.output
    # reads that reach a lost block say so (whichever they are), instead of a bare IO error
    damaged = Store(store.data_dir)
    errors = []
    for read in (
        lambda: damaged.samples("toy"),
        lambda: damaged.load_results("toy", "uniq"),
        lambda: damaged.read_embeddings("toy", "sim_embeddings"),
        lambda: damaged.query("SELECT * FROM brain_run_history"),
    ):
        try:
            read()
        except Exception as err:
            errors.append(err)
    assert errors and all(isinstance(e, StoreDamaged) for e in errors)
    assert "brain.duckdb is damaged: " in str(errors[0]) and "`brain restore" in str(errors[0])
    assert run(restore_cmd, "--data-dir", str(store.data_dir)).exit_code == 0
    kept = list(store.data_dir.glob("brain.duckdb.damaged-*"))
    assert len(kept) == 1 and kept[0].stat().st_size == size // 2
    pd.testing.assert_frame_equal(query(Store(store.data_dir)), answer)
    refused = run(restore_cmd, "--data-dir", str(store.data_dir))
    assert refused.exit_code == 2 and "reads cleanly" in refused.output


def test_orphan_index_file_is_found_and_deleted(built, monkeypatch):
    """A crash between the commit of a rebuilt index and the drop of the old one."""
    store, _ = built
    ds = fob.Dataset("toy", store)
    old = store.get_run("toy", "sim").config["index"]["collection"]
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(compute, "_drop_collection", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        X2 = np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)
        fob.compute_similarity(ds, embeddings=X2, brain_key="sim")
    orphan = store.data_dir / "indexes" / "toy" / f"{old}.parquet"
    assert orphan.exists()
    answer = query(store)
    now = utcnow()
    with store.transaction() as tx:  # while the key is being computed, its files are left
        tx.execute(
            "INSERT INTO brain_locks VALUES (?, ?, ?, ?, ?, ?, ?)",
            ["toy", "sim", "run api", os.getpid(), socket.gethostname(), now, now],
        )
    assert doctor.examine(store) == []
    store.query("DELETE FROM brain_locks")
    (f,) = doctor.examine(store)
    assert f.code == "orphan_index" and f.path == str(orphan) and f.brain_key == "sim"
    assert "no similarity run refers to it" in f.what
    assert doctor.repair(store, [f]) == [f"deleted orphan index file {orphan}"]
    assert not orphan.exists() and doctor.examine(store) == []
    pd.testing.assert_frame_equal(query(store), answer)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_locks_are_found_and_released_live_ones_kept(built):
    store, _ = built
    now = utcnow()
    old = now - timedelta(seconds=LOCK_STALE_S + 60)
    here = socket.gethostname()
    rows = [  # (brain key, pid, host, last heartbeat)
        ("uniq", _dead_pid(), here, now),  # this host, process gone
        ("sim", os.getpid(), here, now),  # this host, alive
        ("gone", 4242, "worker-9", old),  # another host, heartbeat stopped
        ("busy", 4242, "worker-9", now),  # another host, beating
    ]
    with store.transaction() as tx:
        for key, pid, host, beat in rows:
            tx.execute(
                "INSERT INTO brain_locks VALUES (?, ?, ?, ?, ?, ?, ?)",
                ["toy", key, f"run {key}", pid, host, beat, beat],
            )
    findings = doctor.examine(store)
    assert codes(findings) == ["dead_lock"] * 2
    assert sorted(f.brain_key for f in findings) == ["gone", "uniq"]
    assert "is gone" in next(f.what for f in findings if f.brain_key == "uniq")
    assert "last heartbeat is" in next(f.what for f in findings if f.brain_key == "gone")
    result = run(doctor_cmd, "--data-dir", str(store.data_dir), "--repair")
    assert result.exit_code == 0 and "released the lock of 'uniq'" in result.output
    left = store.query("SELECT brain_key FROM brain_locks ORDER BY 1")["brain_key"].tolist()
    assert left == ["busy", "sim"]


def test_corrupted_blocks_are_found(built):
    """Bad bytes over the blocks after the file header: checksums no longer match."""
    store, _ = built
    db = store.data_dir / "brain.duckdb"
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek(12_288)  # DuckDB's file header is the first 3 blocks of 4 KiB
        f.write(np.random.default_rng(0).bytes(size - 12_288))
    (f,) = doctor.check_database(store.data_dir)
    assert f.code == "db_damaged" and f.path == str(db)
    assert f.what.startswith("brain.duckdb is damaged: Corrupt database file: computed checksum")
    assert "brain restore" in f.fix


def test_a_store_that_is_not_there_is_not_created(tmp_path):
    result = run(doctor_cmd, "--data-dir", str(tmp_path / "nothing"))
    assert result.exit_code == 2 and "no store in" in result.output
    assert not (tmp_path / "nothing" / "brain.duckdb").exists()


def test_deleting_or_renaming_runs_and_views_leaves_no_stale_record(built):
    """A delete takes its copy's records with it; a rename writes the new key's copy and
    record and removes the old ones: the doctor finds nothing either way."""
    store, answer = built
    fob.Dataset("toy", store).load_brain_view("uniq").select(["s001", "s002"]).save("pair")
    store.rename_run("toy", "sim", "sim2")
    assert store.parquet_path("toy", "records/runs/sim2").exists()
    assert not store.parquet_path("toy", "records/runs/sim").exists()
    store.delete_run("toy", "uniq")  # with its embeddings key (an artifact of the run)
    store.delete_view("toy", "pair")
    assert doctor.examine(store) == []
    gone = (
        "records/runs/uniq",
        "records/embedding_sets/uniq_embeddings",
        "records/saved_views/pair",
    )
    assert not any(store.parquet_path("toy", f"records/{r}").exists() for r in gone)


def test_the_store_health_check_warns_with_the_findings(built):
    """The non-blocking asset check on a dataset's samples: healthy, then a warning naming a
    deleted copy and the repair."""
    from dagster_brain.checks import build_store_health_check
    from dagster_brain.resources.store import BrainStoreResource

    store, _ = built
    check = build_store_health_check("toy")
    resource = BrainStoreResource(data_dir=str(store.data_dir))
    assert check(store=resource).passed
    store.parquet_path("toy", "samples").unlink()
    result = check(store=resource)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["findings"].value == 1
    assert "copy_missing: Parquet copy 'samples' is missing" in result.metadata["report"].value
    assert result.metadata["repair"].value == "brain doctor --repair"
