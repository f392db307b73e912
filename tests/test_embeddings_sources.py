"""Embeddings keys from precomputed arrays, table columns and existing keys (no model)."""

import numpy as np
import pandas as pd
import pytest
from conftest import sample_frame

from dagster_brain.embeddings import compute_embeddings
from dagster_brain.resources.embedder import EmbedderResource
from dagster_brain.specs import EmbeddingsSpec

IDS = [f"s{i:03d}" for i in range(5)]


@pytest.fixture
def store(store):
    store.write_samples("d", sample_frame([f"/img/{i}.png" for i in range(5)]))
    return store


def spec(**kw):
    return EmbeddingsSpec(dataset="d", **kw)


def run(spec_, store):
    return compute_embeddings(spec_, store, embedder=EmbedderResource())


def test_npz_array_and_npy_follow_ids(store, tmp_path):
    X = np.arange(15, dtype=np.float32).reshape(5, 3)
    np.savez(tmp_path / "v.npz", ids=np.array(IDS[::-1]), embeddings=X[::-1])
    emb = run(spec(key="arr", source="array", path=str(tmp_path / "v.npz"), model="clip"), store)
    assert emb.sample_ids == IDS and np.array_equal(emb.vectors, X)
    assert emb.model == "clip"  # recorded for later get_model / prompts
    np.save(tmp_path / "v.npy", X)  # rows follow the dataset's sorted sample ids
    emb = run(spec(key="npy", source="array", path=str(tmp_path / "v.npy")), store)
    assert np.array_equal(emb.vectors, X)


def test_table_column_and_existing_key(store, tmp_path):
    df = pd.DataFrame({"id": IDS, "vec": [[float(i), 1.0] for i in range(5)]})
    df.to_parquet(tmp_path / "t.parquet")
    emb = run(
        spec(key="col", source="column", path=str(tmp_path / "t.parquet"), column="vec"), store
    )
    assert emb.vectors[:, 0].tolist() == [0, 1, 2, 3, 4]
    copy = run(spec(key="copy", source="key", from_key="col"), store)
    assert np.array_equal(copy.vectors, emb.vectors)
    sets = store.embedding_sets("d").set_index("embeddings_key")
    assert sets.loc["copy", "source"] == "key:col"


def test_bad_precomputed_inputs_name_the_sample(store, tmp_path):
    df = pd.DataFrame({"id": IDS, "vec": [[1.0, 2.0]] * 4 + [[1.0]]})
    df.to_parquet(tmp_path / "ragged.parquet")
    with pytest.raises(ValueError, match=r"ragged.parquet.*'s004'.*1 values, expected 2"):
        run(
            spec(key="x", source="column", path=str(tmp_path / "ragged.parquet"), column="vec"),
            store,
        )
    df = pd.DataFrame({"id": IDS, "vec": [[1.0, np.nan]] + [[1.0, 2.0]] * 4})
    df.to_parquet(tmp_path / "nan.parquet")
    with pytest.raises(ValueError, match=r"'s000'.*non-finite"):
        run(spec(key="x", source="column", path=str(tmp_path / "nan.parquet"), column="vec"), store)
    with pytest.raises(ValueError, match="no column 'missing'"):
        run(
            spec(key="x", source="column", path=str(tmp_path / "nan.parquet"), column="missing"),
            store,
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(spec(key="x", source="array", path=str(tmp_path / "none.npz")), store)
    assert store.embedding_sets("d").empty  # nothing was written


def test_patches_need_a_detections_field(store):
    labels = pd.DataFrame(
        {"sample_id": IDS, "label_id": [f"gt:{i}" for i in IDS], "label": ["a"] * 5}
    )
    store.write_labels("d", "gt", "classification", ["a"], labels)
    with pytest.raises(ValueError, match="patches_field 'gt' holds classification"):
        run(spec(key="p", patches_field="gt"), store)
