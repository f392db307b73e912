"""The DuckDB + Parquet store: transactions, runs, rename/delete, validation."""

import numpy as np
import pandas as pd
import pytest
from conftest import sample_frame

from dagster_brain.names import BrainNameError
from dagster_brain.store import BrainRunRecord, Store, StoreError


def _dataset(store: Store, n: int = 4) -> list[str]:
    df = sample_frame([f"/img/{i}.png" for i in range(n)])
    store.write_samples("d", df)
    return df["sample_id"].tolist()


def _run(store: Store, key: str, ids: list[str], scores) -> BrainRunRecord:
    record = BrainRunRecord("d", key, "uniqueness", "knn", {"k": 3}, ids, run_id="r1")
    return store.commit_run(record, pd.DataFrame({"sample_id": ids, "uniqueness": scores}))


def test_samples_labels_and_embeddings_roundtrip(store):
    ids = _dataset(store)
    labels = pd.DataFrame(
        {
            "sample_id": ids[:2],
            "label_id": ["gt:a", "gt:b"],
            "label": ["cat", "dog"],
            "confidence": [0.9, np.nan],
            "logits": [[1.0, 2.0], None],
            "box": [[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 1.0]],
        }
    )
    store.write_labels("d", "gt", "detections", ["cat", "dog"], labels)
    out = store.labels("d", "gt")
    assert out["label"].tolist() == ["cat", "dog"]
    assert list(out["box"].iloc[0]) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert store.label_field("d", "gt") == ("detections", ["cat", "dog"])
    vecs = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.write_embeddings("d", "emb", ids, vecs, model="m")
    emb = store.read_embeddings("d", "emb", ids=[ids[2], ids[0]])
    assert emb.sample_ids == [ids[0], ids[2]]
    assert np.array_equal(emb.vectors, vecs[[0, 2]])
    assert store.parquet_path("d", "embeddings/emb").exists()
    assert store.parquet_path("d", "samples").exists()


def test_vectors_stream_in_and_out_in_blocks_in_id_order(store, monkeypatch):
    """Blocks of 4 rows (as if a million vectors): written in any order, patches too, read
    back whole or by ids in (sample, label) order with each vector on its own row."""
    import dagster_brain.store.embeddings as module

    monkeypatch.setattr(module, "BLOCK_ROWS", 4)
    ids = _dataset(store, n=11)
    rng = np.random.default_rng(3)
    order = rng.permutation(11)
    vecs = rng.standard_normal((11, 5)).astype(np.float32)
    written = store.write_embeddings("d", "e", [ids[i] for i in order], vecs[order])
    assert written.sample_ids == ids and np.array_equal(written.vectors, vecs)
    whole = store.read_embeddings("d", "e")
    assert whole.sample_ids == ids and np.array_equal(whole.vectors, vecs)
    assert whole.data_version == written.data_version
    some = store.read_embeddings("d", "e", ids=[ids[9], ids[1], ids[9], ids[4]])
    assert some.sample_ids == [ids[1], ids[4], ids[9]]
    assert np.array_equal(some.vectors, vecs[[1, 4, 9]])
    # patches: two labels per sample, written label-reversed
    samples = [s for s in ids for _ in range(2)][::-1]
    labels = [f"{s}:{j}" for s in ids for j in range(2)][::-1]
    pv = rng.standard_normal((22, 3)).astype(np.float32)
    store.write_embeddings("d", "p", samples, pv, label_ids=labels, patches_field="gt")
    got = store.read_embeddings("d", "p")
    assert got.label_ids == labels[::-1] and got.sample_ids == samples[::-1]
    assert np.array_equal(got.vectors, pv[::-1])
    bad = vecs.copy()
    bad[9, 2] = np.nan  # in the third block
    with pytest.raises(StoreError, match=ids[9]):
        store.write_embeddings("d", "e", ids, bad)
    assert np.array_equal(store.read_embeddings("d", "e").vectors, vecs)  # nothing lost


def test_bad_names_are_refused_not_pasted_into_sql(store):
    with pytest.raises(BrainNameError, match="dataset"):
        store.write_samples("d; DROP TABLE samples", sample_frame(["/x.png"]))
    ids = _dataset(store)
    with pytest.raises(BrainNameError, match="brain key"):
        _run(store, 'u"; drop', ids, [0.0] * 4)
    assert store.list_datasets() == ["d"]


def test_embedding_errors_name_the_sample(store):
    ids = _dataset(store)
    vecs = np.ones((4, 2), dtype=np.float32)
    vecs[2, 1] = np.nan
    with pytest.raises(StoreError, match=ids[2]):
        store.write_embeddings("d", "emb", ids, vecs)
    with pytest.raises(StoreError, match="unknown samples"):
        store.write_embeddings("d", "emb", ["nope"], np.ones((1, 2)))
    with pytest.raises(StoreError, match="no embeddings key 'missing'.*"):
        store.read_embeddings("d", "missing")


def test_failed_run_leaves_previous_results(store, monkeypatch):
    ids = _dataset(store)
    _run(store, "u", ids, [0.1, 0.2, 0.3, 1.0])
    before = store.load_results("d", "u")
    parquet = store.parquet_path("d", "results/u")
    before_bytes = parquet.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full while recording history")

    monkeypatch.setattr(Store, "_history", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _run(store, "u", ids, [9.0, 9.0, 9.0, 9.0])
    monkeypatch.undo()
    pd.testing.assert_frame_equal(store.load_results("d", "u"), before)
    assert parquet.read_bytes() == before_bytes
    assert not list(parquet.parent.glob("*.tmp"))  # no temporary files left behind


def test_rename_and_delete_remove_everything(store):
    ids = _dataset(store)
    _run(store, "u", ids, [0.1, 0.2, 0.3, 1.0])
    store.rename_run("d", "u", "v")
    assert store.list_runs("d")["brain_key"].tolist() == ["v"]
    assert store.load_results("d", "v")["uniqueness"].tolist() == [0.1, 0.2, 0.3, 1.0]
    assert store.parquet_path("d", "results/v").exists()
    assert not store.parquet_path("d", "results/u").exists()
    store.delete_run("d", "v")
    tables = store.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'results'"
    )
    assert tables.empty
    assert not store.parquet_path("d", "results/v").exists()
    with pytest.raises(StoreError, match="no brain run 'v'"):
        store.get_run("d", "v")
    events = store.query("SELECT event FROM brain_run_history ORDER BY event_at")["event"]
    assert events.tolist() == ["materialized", "renamed", "deleted"]


def test_a_key_cannot_change_kind(store):
    ids = _dataset(store)
    _run(store, "u", ids, [0.0] * 4)
    rec = BrainRunRecord("d", "u", "hardness", "entropy", {}, ids)
    with pytest.raises(StoreError, match="already holds a uniqueness run"):
        store.commit_run(rec, pd.DataFrame({"sample_id": ids}))


def test_export_writes_ids_and_scores(store, tmp_path):
    ids = _dataset(store)
    _run(store, "u", ids, [0.1, 0.2, 0.3, 1.0])
    out = store.export_results("d", "u", tmp_path / "out" / "u.parquet")
    df = pd.read_parquet(out)
    assert df.columns.tolist() == ["sample_id", "uniqueness"]
    assert df["sample_id"].tolist() == ids


def test_list_runs_filters_by_type_and_method(store):
    ids = _dataset(store)
    _run(store, "u", ids, [0.0] * 4)
    store.commit_run(BrainRunRecord("d", "h", "hardness", "entropy", {}, ids), None)
    assert store.list_runs("d", kind="hardness")["brain_key"].tolist() == ["h"]
    assert store.list_runs("d", method="knn")["brain_key"].tolist() == ["u"]
    assert store.load_results("d", "h").empty


def _write_key(data_dir: str, key: str) -> None:
    store = Store(data_dir)
    ids = store.sample_ids("d")
    for _ in range(5):
        store.write_embeddings("d", key, ids, np.random.default_rng().normal(size=(len(ids), 8)))


def test_two_processes_write_the_same_store(store):
    """Parallel Dagster steps each open the DuckDB file; the lock is waited for, not fatal."""
    import multiprocessing as mp

    ids = _dataset(store)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_key, args=(str(store.data_dir), k)) for k in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(store.embedding_sets("d")["embeddings_key"]) == ["a", "b"]
    assert store.read_embeddings("d", "a").sample_ids == ids


def test_extra_tables_move_and_go_with_the_run(store):
    ids = _dataset(store)
    record = BrainRunRecord("d", "m", "mistakenness", "x", {}, ids)
    objects = pd.DataFrame({"label_id": ["a", "b"], "score": [0.1, 0.9]})
    store.commit_run(record, pd.DataFrame({"sample_id": ids}), extra={"objects": objects})
    assert store.load_extra("d", "m", "objects")["score"].tolist() == [0.1, 0.9]
    store.rename_run("d", "m", "m2")
    assert len(store.load_extra("d", "m2", "objects")) == 2
    assert store.parquet_path("d", "results/m2__objects").exists()
    store.delete_run("d", "m2")
    left = store.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'results'"
    )
    assert left.empty and not store.parquet_path("d", "results/m2__objects").exists()


def test_run_lock_refuses_a_second_run_and_takes_over_dead_holders(store):
    _dataset(store)
    with store.run_lock("d", "u", "run A"):
        with pytest.raises(StoreError, match="'u' on 'd' is being computed by run A"):
            with store.run_lock("d", "u", "run B"):
                pass
        with store.run_lock("d", "other", "run C"):  # other keys are free
            pass
    # a lock left behind by a process that no longer exists is taken over
    import socket

    with store.connect() as conn:
        conn.execute(
            "INSERT INTO brain_locks (dataset, brain_key, holder, pid, host, acquired_at) "
            "VALUES ('d', 'u', 'run X', 999999, ?, now())",
            [socket.gethostname()],
        )
    with store.run_lock("d", "u", "run D"):
        holder = store.query("SELECT holder FROM brain_locks WHERE brain_key = 'u'")
        assert holder["holder"].tolist() == ["run D"]
    assert store.query("SELECT * FROM brain_locks").empty


def test_run_lock_waits_for_the_holder_when_asked(store):
    import threading
    import time

    store.create_dataset("d")
    order = []

    def first():
        with store.run_lock("d", "u", "run A"):
            order.append("A in")
            time.sleep(1.0)
            order.append("A out")

    t = threading.Thread(target=first)
    t.start()
    while not order:
        time.sleep(0.01)
    with pytest.raises(StoreError, match="being computed by run A"):
        with store.run_lock("d", "u", "run B", wait_s=0.2):
            pass
    with store.run_lock("d", "u", "run C", wait_s=30):
        order.append("C in")
    t.join()
    assert order == ["A in", "A out", "C in"]


def test_run_lock_takes_over_a_dead_worker_on_another_host(store, monkeypatch):
    import time

    import dagster_brain.store.locks as store_module

    _dataset(store)

    def plant(age_s):
        with store.connect() as conn:
            conn.execute("DELETE FROM brain_locks")
            conn.execute(
                "INSERT INTO brain_locks VALUES ('d', 'u', 'run W', 1, 'worker-7', "
                "now() - to_seconds(?), now() - to_seconds(?))",
                [age_s, age_s],
            )

    plant(10)  # a live worker elsewhere: refused
    with pytest.raises(StoreError, match="run W.*worker-7"):
        with store.run_lock("d", "u", "run A"):
            pass
    plant(store_module.LOCK_STALE_S + 60)  # its heartbeat stopped: taken over
    monkeypatch.setattr(store_module, "LOCK_HEARTBEAT_S", 0.05)
    with store.run_lock("d", "u", "run B"):
        first = store.query("SELECT heartbeat_at FROM brain_locks")["heartbeat_at"].iloc[0]
        time.sleep(0.5)
        later = store.query("SELECT holder, heartbeat_at FROM brain_locks").iloc[0]
        assert later["holder"] == "run B" and later["heartbeat_at"] > first  # it beats
    assert store.query("SELECT * FROM brain_locks").empty


def test_nested_transactions_keep_their_own_parquet_copies(store):
    """Each transaction carries its rename list: an inner one that commits or fails does not
    take the outer one's pending copies with it (they were one list on the Store before)."""
    ids = _dataset(store)
    copy = store.parquet_path("d", "samples")
    before = copy.read_bytes()
    with store.transaction() as outer:
        store.save_view("d", "inner", pd.DataFrame({"sample_id": ids[:2]}))  # commits inside
        with pytest.raises(RuntimeError, match="boom"):
            with store.transaction() as failing:
                store._mirror(failing, "d", "views/failed", "SELECT 1 AS x")
                raise RuntimeError("boom")
        store._mirror(outer, "d", "samples", "SELECT * FROM samples WHERE sample_id = ?", [ids[0]])
        assert [final for _, final in outer.renames] == [copy]
        assert copy.read_bytes() == before  # replaced only after the commit
    assert pd.read_parquet(copy)["sample_id"].tolist() == [ids[0]]
    assert pd.read_parquet(store.parquet_path("d", "views/inner"))["sample_id"].tolist() == ids[:2]
    assert not store.parquet_path("d", "views/failed").exists()
    assert not list(store.parquet_dir.rglob("*.tmp"))


def test_concurrent_transactions_on_one_store_do_not_mix_copies(store):
    import threading

    ids = _dataset(store)
    both_open = threading.Barrier(2, timeout=60)
    seen: dict[str, list] = {}

    def work(name: str, fail: bool) -> None:
        try:
            with store.transaction() as tx:
                store._mirror(
                    tx, "d", f"views/{name}", "SELECT * FROM samples WHERE sample_id = ?", [ids[0]]
                )
                both_open.wait()  # both transactions hold a pending copy now
                seen[name] = [final.name for _, final in tx.renames]
                both_open.wait()
                if fail:
                    raise RuntimeError(f"{name} failed")
        except RuntimeError:
            pass

    threads = [threading.Thread(target=work, args=a) for a in (("a", False), ("b", True))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert seen == {"a": ["a.parquet"], "b": ["b.parquet"]}
    assert store.parquet_path("d", "views/a").exists()
    assert not store.parquet_path("d", "views/b").exists()
    assert not list(store.parquet_dir.rglob("*.tmp"))


def test_run_lock_logs_repeated_missed_heartbeats(store, monkeypatch, caplog):
    import logging
    import time

    import duckdb

    import dagster_brain.store.locks as locks

    store.create_dataset("d")
    monkeypatch.setattr(locks, "LOCK_HEARTBEAT_S", 0.01)
    working = store.connect

    def unreachable():
        raise duckdb.IOException("IO Error: network share gone")

    wanted = "run lock of brain key 'u' on 'd': 3 heartbeats missed in a row"
    with caplog.at_level(logging.DEBUG, logger="dagster_brain"):
        with store.run_lock("d", "u", "run A"):
            monkeypatch.setattr(store, "connect", unreachable)
            give_up = time.monotonic() + 60
            while wanted not in caplog.text and time.monotonic() < give_up:
                time.sleep(0.01)
            monkeypatch.setattr(store, "connect", working)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and wanted in warnings[0].getMessage()
    assert "network share gone" in warnings[0].getMessage()
    misses = [r for r in caplog.records if "heartbeat missed" in r.getMessage()]
    assert len(misses) >= 2 and all(r.levelno == logging.DEBUG for r in misses)
    assert store.query("SELECT * FROM brain_locks").empty  # released as usual


def test_a_label_field_without_a_class_list_reads_back_as_none(tmp_path):
    """A field written with classes None (no declared list) reads back as None, not NA."""
    store = Store(tmp_path)
    labels = pd.DataFrame({"label_id": ["l0"], "sample_id": ["s000"], "label": ["cat"]})
    store.write_samples("toy", sample_frame(["/a.png"]), {"gt": ("classification", None, labels)})
    assert store.label_field("toy", "gt") == ("classification", None)
    assert store.labels("toy", "gt")["label"].tolist() == ["cat"]


def _opens(db_path) -> bool:
    """Whether another process can open the store's file now."""
    import subprocess
    import sys

    code = f"import duckdb; duckdb.connect({str(db_path)!r}).close()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode and "lock" not in done.stderr.lower():
        raise AssertionError(done.stderr)
    return done.returncode == 0


def test_pinned_holds_the_file_open_until_the_outermost_pin_ends(store):
    """Connections inside a pin share one open database (reentrant, nested transactions
    included); other processes get the file once the outermost pin ends."""
    ids = _dataset(store)
    assert _opens(store.db_path)
    with store.pinned():
        with store.pinned():
            _run(store, "u", ids, [0.1, 0.2, 0.3, 0.4])  # a transaction inside the pins
            assert not _opens(store.db_path)
        assert not _opens(store.db_path)  # the inner pin's end keeps the file
        assert store.load_results("d", "u")["uniqueness"].tolist() == [0.1, 0.2, 0.3, 0.4]
    assert _opens(store.db_path)
    assert store.get_run("d", "u").kind == "uniqueness"


def test_unknown_samples_reads_only_the_ids_asked(store):
    ids = _dataset(store)
    assert store.unknown_samples("d", [ids[1], "zz", "aa", ids[0], "zz"]) == ["aa", "zz"]
    assert store.unknown_samples("d", []) == []
    assert store.unknown_samples("d", ids) == []
