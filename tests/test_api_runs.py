"""The notebook API: compute_uniqueness and brain-run management with the reference's names."""

import numpy as np
import pytest
from conftest import sample_frame

import dagster_brain as fob
from dagster_brain.store import StoreError


@pytest.fixture
def dataset(store):
    store.write_samples("toy", sample_frame([f"/img/{i}.png" for i in range(6)]))
    return fob.Dataset("toy", store)


def vectors():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 8)).astype(np.float32)
    X[5] = X[2]  # s005 duplicates s002
    return X


def test_compute_uniqueness_from_array_and_manage_runs(dataset, tmp_path):
    out = fob.compute_uniqueness(dataset, embeddings=vectors(), k=2)
    assert out.record.brain_key == "uniqueness"  # the output field is the key
    assert set(out.results.nsmallest(2, "uniqueness")["sample_id"]) == {"s002", "s005"}
    assert dataset.list_brain_runs() == ["uniqueness"]
    assert dataset.list_brain_runs(type="uniqueness") == ["uniqueness"]
    assert dataset.list_brain_runs(type="hardness") == []
    info = dataset.get_brain_info("uniqueness")
    assert info["type"] == "uniqueness" and info["config"]["k"] == 2
    assert info["num_samples"] == 6 and info["timestamp"]
    view = dataset.load_brain_view("uniqueness")
    assert len(view) == 6
    top = view.sort_by("uniqueness", reverse=True)
    assert top.ids[0] == out.results.loc[out.results["uniqueness"].idxmax(), "sample_id"]
    assert top.to_pandas()["uniqueness"].is_monotonic_decreasing
    dataset.rename_brain_run("uniqueness", "uniq_v2")
    assert dataset.has_brain_run("uniq_v2") and not dataset.has_brain_run("uniqueness")
    assert len(dataset.load_brain_results("uniq_v2")) == 6
    assert "uniqueness_embeddings" in dataset.store.embedding_sets("toy")["embeddings_key"].values
    dataset.delete_brain_run("uniq_v2")
    assert dataset.list_brain_runs() == []
    # the embeddings the run computed from the array went with it
    assert dataset.store.embedding_sets("toy").empty
    with pytest.raises(StoreError, match="no brain run 'uniq_v2'"):
        dataset.load_brain_results("uniq_v2")


def test_uniqueness_on_a_view_scores_only_the_view(dataset):
    fob.compute_uniqueness(dataset, embeddings=vectors(), brain_key="all")
    view = dataset.view(["s000", "s001", "s002"])
    out = fob.compute_uniqueness(view, embeddings="all_embeddings", brain_key="sub", k=1)
    assert sorted(out.results["sample_id"]) == ["s000", "s001", "s002"]
    assert dataset.load_brain_view("sub").ids == ("s000", "s001", "s002")


def test_api_errors_name_what_is_wrong(dataset):
    with pytest.raises(StoreError, match="no embeddings key 'nope'"):
        fob.compute_uniqueness(dataset, embeddings="nope")
    with pytest.raises(ValueError, match="5 rows for 6 samples"):
        fob.compute_uniqueness(dataset, embeddings=np.ones((5, 3)))
    bad = vectors()
    bad[3, 0] = np.nan
    with pytest.raises(StoreError, match="s003"):
        fob.compute_uniqueness(dataset, embeddings=bad)
    with pytest.raises(StoreError, match="no dataset 'missing'"):
        fob.Dataset("missing", dataset.store)


def test_saved_views_round_trip_through_the_api(dataset):
    """view.save, then list, load (same order) and delete: the viewer's lasso uses the same
    store tables."""
    fob.compute_uniqueness(dataset, embeddings=vectors(), k=2, brain_key="u")
    view = dataset.load_brain_view("u").sort_by("uniqueness")
    view.select(list(view.ids[:3])).save("least_unique")
    listed = dataset.list_saved_views()
    assert listed["name"].tolist() == ["least_unique"] and listed["n"].tolist() == [3]
    again = dataset.load_saved_view("least_unique")
    assert again.ids == view.ids[:3]
    dataset.delete_saved_view("least_unique")
    assert dataset.list_saved_views().empty
    with pytest.raises(StoreError, match="least_unique"):
        dataset.load_saved_view("least_unique")
