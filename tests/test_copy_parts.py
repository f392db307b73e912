"""The Parquet copies of an embeddings key and of the samples grow by parts when a batch only
adds samples; every reader (doctor, restore) sees the file and its parts as one copy, and
any other change rewrites it whole."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_brain.doctor import check_copies, repair, restore
from dagster_brain.store import Store
from dagster_brain.store.mirror import MAX_PARTS, copy_files, parts_dir

DIM = 8


def _samples(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": ids, "filepath": [f"/x/{i}.jpg" for i in ids]})


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _copy_rows(path) -> dict[str, np.ndarray]:
    table = pa.concat_tables(pq.read_table(f) for f in copy_files(path))
    vectors = table.column("vector").to_pylist()
    return dict(zip(table.column("sample_id").to_pylist(), map(np.asarray, vectors), strict=True))


def _add(store: Store, ids: list[str], seed: int) -> np.ndarray:
    X = _vectors(len(ids), seed)
    store.write_samples("ds", _samples(ids))
    store.update_embeddings("ds", "e", ids, X, model="m")
    return X


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(tmp_path / "data")
    ids = [f"s{i:03d}" for i in range(20)]
    store.write_samples("ds", _samples(ids))
    store.write_embeddings("ds", "e", ids, _vectors(20, 0), model="m")
    return store


def test_added_batches_are_appended_as_parts_that_read_back_as_the_key(store):
    path = store.parquet_path("ds", "embeddings/e")
    before = path.stat().st_mtime_ns
    _add(store, ["t000", "t001"], 1)
    _add(store, ["u000"], 2)
    files = copy_files(path)
    assert [f.name for f in files] == ["e.parquet", "0-1.parquet", "0-2.parquet"]
    assert path.stat().st_mtime_ns == before  # the base file was not rewritten
    emb = store.read_embeddings("ds", "e")
    copied = _copy_rows(path)
    assert sorted(copied) == emb.sample_ids
    for sid, vector in zip(emb.sample_ids, emb.vectors, strict=True):
        np.testing.assert_array_equal(copied[sid], vector)
    assert check_copies(store, "ds") == []  # rows and data version over file + parts


def test_replacing_or_dropping_rows_rewrites_the_copy_and_removes_its_parts(store):
    path = store.parquet_path("ds", "embeddings/e")
    _add(store, ["t000"], 1)
    assert len(copy_files(path)) == 2
    new = _vectors(1, 9)
    store.update_embeddings("ds", "e", ["s003"], new, model="m")  # replaces a row
    assert copy_files(path) == [path]
    assert not parts_dir(path).exists()
    np.testing.assert_array_equal(_copy_rows(path)["s003"], new[0])
    _add(store, ["u000"], 2)  # the next generation's first part
    assert [f.name for f in copy_files(path)] == ["e.parquet", "1-1.parquet"]
    assert check_copies(store, "ds") == []  # a stamped base file and its part read as one
    store.update_embeddings("ds", "e", [], np.zeros((0, DIM), np.float32), drop_samples=["t000"])
    assert copy_files(path) == [path]
    assert "t000" not in _copy_rows(path)
    assert check_copies(store, "ds") == []


def test_a_copy_with_max_parts_is_rewritten_whole(store):
    path = store.parquet_path("ds", "embeddings/e")
    for i in range(MAX_PARTS):
        _add(store, [f"t{i:03d}"], i + 1)
    assert len(copy_files(path)) == MAX_PARTS + 1
    _add(store, ["u000"], 99)
    assert copy_files(path) == [path]
    assert len(_copy_rows(path)) == 20 + MAX_PARTS + 1


def test_new_samples_are_appended_to_the_samples_copy_and_changed_ones_rewrite_it(store):
    path = store.parquet_path("ds", "samples")
    _add(store, ["t000", "t001"], 1)
    assert [f.name for f in copy_files(path)] == ["samples.parquet", "0-1.parquet"]
    rows = pa.concat_tables(pq.read_table(f) for f in copy_files(path)).to_pandas()
    assert sorted(rows["sample_id"]) == store.sample_ids("ds")
    changed = _samples(["t000"]).assign(filepath="/y/t000.jpg")
    store.write_samples("ds", changed)  # an existing sample changes: the copy is rewritten
    assert copy_files(path) == [path]
    rows = pq.read_table(path).to_pandas().set_index("sample_id")
    assert rows.loc["t000", "filepath"] == "/y/t000.jpg"
    assert check_copies(store, "ds") == []


def test_restore_reads_the_parts(store, tmp_path):
    _add(store, ["t000", "t001"], 1)
    want = store.read_embeddings("ds", "e")
    samples = store.samples("ds")
    store.db_path.unlink()
    restore(store.data_dir)
    again = Store(store.data_dir)
    got = again.read_embeddings("ds", "e")
    assert got.sample_ids == want.sample_ids
    np.testing.assert_array_equal(got.vectors, want.vectors)
    assert got.data_version == want.data_version
    pd.testing.assert_frame_equal(again.samples("ds"), samples)


def test_parts_of_an_earlier_generation_are_ignored_and_repaired_away(store):
    path = store.parquet_path("ds", "embeddings/e")
    _add(store, ["t000"], 1)
    stale = copy_files(path)[1].read_bytes()
    store.update_embeddings("ds", "e", ["s000"], _vectors(1, 5), model="m")  # a rewrite
    # a rewrite interrupted before its old parts were removed leaves them behind
    parts_dir(path).mkdir()
    (parts_dir(path) / "0-1.parquet").write_bytes(stale)
    assert copy_files(path) == [path]  # generation 1 reads no part of generation 0
    findings = check_copies(store, "ds")
    assert [f.code for f in findings] == ["part_stale"]
    repair(store, findings)
    assert check_copies(store, "ds") == []
    assert not (parts_dir(path) / "0-1.parquet").exists()


def test_a_batch_that_fails_inside_its_transaction_leaves_key_and_copy_as_they_were(
    store, monkeypatch
):
    from dagster_brain.store import mirror

    path = store.parquet_path("ds", "embeddings/e")
    _add(store, ["t000"], 1)
    store.write_samples("ds", _samples(["u000"]))
    before = store.read_embeddings("ds", "e")

    def fail(*args, **kwargs):  # the record written after the part: the commit never comes
        raise OSError("disk full")

    monkeypatch.setattr(mirror, "write_copy", fail)
    with pytest.raises(OSError, match="disk full"):
        store.update_embeddings("ds", "e", ["u000"], _vectors(1, 3), model="m")
    monkeypatch.undo()
    assert store.read_embeddings("ds", "e").sample_ids == before.sample_ids
    assert [f.name for f in parts_dir(path).iterdir()] == ["0-1.parquet"]  # no part, no tmp
    assert check_copies(store, "ds") == []
