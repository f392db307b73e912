"""A kNN graph built in shards (plan, one step per block of rows, commit) equals the graph one
process builds, exact and approximate; stale parts and changed vectors are refused."""

import numpy as np
import pandas as pd
import pytest
from conftest import sample_frame

from dagster_brain.graph_shards import (
    SHARDS_DIR,
    ShardedBuild,
    plan_shards,
    search_shard,
)
from dagster_brain.methods import run_brain
from dagster_brain.methods.knn_graph import KnnGraphSpec, graph_inputs
from dagster_brain.methods.registry import delete_brain_run


def clustered(n=900, dim=24, centers=12, seed=4):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, dim)) * 4
    X = means[rng.integers(0, centers, n)] + rng.normal(size=(n, dim))
    return X.astype(np.float32), [f"s{i:03d}" for i in range(n)]


@pytest.fixture
def vectors(store, tmp_path):
    X, ids = clustered()
    store.write_samples("toy", sample_frame([str(tmp_path / f"{i}.png") for i in range(len(ids))]))
    store.write_embeddings("toy", "e", ids, X)
    return store, X, ids


def plan(spec, store, run_id):
    inputs = graph_inputs(spec, store)
    return plan_shards(spec, store, inputs, run_id=run_id, shards=spec.shards)


def sharded_run(spec, store, run_id="r1"):
    tasks = plan(spec, store, run_id)
    for task in reversed(tasks):  # any order
        search_shard(task, spec)
    build = ShardedBuild(tuple(tasks))
    return run_brain(spec, store, run_id=run_id, sharded=None if build.whole else build), tasks


def graph_table(store, key):
    return store.load_extra("toy", key, "knn").sort_values("item_id").reset_index(drop=True)


@pytest.mark.parametrize(
    ("exact", "metric"), [(True, "cosine"), (False, "cosine"), (False, "euclidean")]
)
def test_a_sharded_graph_equals_the_one_built_whole(vectors, exact, metric):
    store, _, ids = vectors
    base = dict(kind="knn_graph", dataset="toy", embeddings="e", k=8, metric=metric, exact=exact)
    whole = run_brain(KnnGraphSpec(brain_key="whole", **base), store)
    split = KnnGraphSpec(brain_key="split", shards=3, **base)
    out, tasks = sharded_run(split, store)
    assert [(t.start, t.stop) for t in tasks] == [(0, 300), (300, 600), (600, 900)]
    assert not any(t.whole for t in tasks)
    pd.testing.assert_frame_equal(out.results, whole.results)
    a, b = graph_table(store, "whole"), graph_table(store, "split")
    pd.testing.assert_frame_equal(a.drop(columns="row"), b.drop(columns="row"))
    assert out.summary["shards"] == 3 and out.summary["exact"] is exact
    if not exact:  # the recall measured on the plan's sample, as a whole build measures it
        assert out.summary["recall_at_k"] == whole.summary["recall_at_k"] >= 0.9
        assert out.summary["nprobe"] == whole.summary["nprobe"]
    # the parts are gone once committed; the record's config is the graph's, shards aside
    assert not any((store.data_dir / SHARDS_DIR / "toy" / "split").iterdir())
    rec = store.get_run("toy", "split")
    assert "shards" not in rec.config and rec.config["k"] == 8


def test_the_shard_count_is_not_part_of_the_code_version():
    base = dict(kind="knn_graph", dataset="toy", brain_key="g", embeddings="e")
    assert KnnGraphSpec(**base).spec_hash() == KnnGraphSpec(shards=4, **base).spec_hash()
    assert KnnGraphSpec(**base).spec_hash() != KnnGraphSpec(k=4, **base).spec_hash()


def test_an_exact_graph_that_changed_little_is_updated_by_the_commit(vectors):
    store, X, ids = vectors
    spec = KnnGraphSpec(
        kind="knn_graph", dataset="toy", brain_key="g", embeddings="e", k=8, shards=3
    )
    first, _ = sharded_run(spec, store)
    assert first.summary["shards"] == 3 and not first.summary["incremental"]
    X2 = X.copy()
    X2[5] += 3.0
    store.write_embeddings("toy", "e", ids, X2)
    again, tasks = sharded_run(spec, store, run_id="r2")
    assert len(tasks) == 1 and tasks[0].whole  # no parts: the commit updates in place
    assert again.summary["incremental"] is True and again.summary["shards"] is None
    rebuilt = run_brain(spec.model_copy(update={"brain_key": "fresh", "shards": 1}), store)
    pd.testing.assert_frame_equal(again.results, rebuilt.results)


def test_vectors_changed_after_the_plan_are_refused_and_the_previous_graph_stays(vectors):
    store, X, ids = vectors
    spec = KnnGraphSpec(
        kind="knn_graph", dataset="toy", brain_key="g", embeddings="e", k=8, shards=2, exact=False
    )
    before, _ = sharded_run(spec, store)
    tasks = plan(spec, store, "r2")
    search_shard(tasks[0], spec)
    store.write_embeddings("toy", "e", ids, X[::-1].copy())  # same ids, other vectors
    search_shard(tasks[1], spec)  # searches the plan's copy of the vectors
    with pytest.raises(ValueError, match="embeddings changed between the plan and committing"):
        run_brain(spec, store, run_id="r2", sharded=ShardedBuild(tuple(tasks)))
    pd.testing.assert_frame_equal(store.load_results("toy", "g"), before.results)


def test_a_missing_part_or_a_replaced_plan_is_named(vectors):
    store, _, _ = vectors
    spec = KnnGraphSpec(
        kind="knn_graph", dataset="toy", brain_key="g", embeddings="e", k=8, shards=3
    )
    tasks = plan(spec, store, "r1")
    search_shard(tasks[0], spec)
    search_shard(tasks[2], spec)
    with pytest.raises(ValueError, match=r"part 1 \(rows 300-600\) is missing"):
        run_brain(spec, store, run_id="r1", sharded=ShardedBuild(tuple(tasks)))
    plan(spec, store, "r2")  # a newer plan of the same key
    with pytest.raises(ValueError, match="brain key 'g'.*no plan at .*newer plan"):
        search_shard(tasks[1], spec)
    assert store.get_run("toy", "g", missing_ok=True) is None  # nothing was committed
    # a failed build's parts go with the run when it is deleted
    approx = spec.model_copy(update={"exact": False})  # rebuilt, never updated in place
    sharded_run(approx, store, run_id="r3")
    plan(approx, store, "r4")  # then that run fails
    assert (store.data_dir / SHARDS_DIR / "toy" / "g" / "r4" / "vectors.npy").exists()
    delete_brain_run(store, "toy", "g")
    assert not (store.data_dir / SHARDS_DIR / "toy" / "g").exists()


def test_too_few_items_are_built_by_the_commit(store, tmp_path):
    X, ids = clustered(n=5)
    store.write_samples("toy", sample_frame([str(tmp_path / f"{i}.png") for i in range(5)]))
    store.write_embeddings("toy", "e", ids, X)
    spec = KnnGraphSpec(
        kind="knn_graph", dataset="toy", brain_key="g", embeddings="e", k=2, shards=4
    )
    out, tasks = sharded_run(spec, store)
    assert len(tasks) == 1 and tasks[0].whole and out.summary["items"] == 5


def test_the_sharded_asset_runs_one_step_per_shard_and_takes_launch_config(vectors, tmp_path):
    import dagster as dg

    from dagster_brain.checks import check_results
    from dagster_brain.resources.store import BrainStoreResource
    from dagster_brain.sharded_graph_asset import build_sharded_graph_asset

    store, _, _ = vectors
    spec = KnnGraphSpec(
        kind="knn_graph", dataset="toy", brain_key="g", embeddings="e", k=8, shards=3
    )
    asset = build_sharded_graph_asset(spec)
    assert asset.key == dg.AssetKey(["toy", "brain", "g"])
    resources = {"store": BrainStoreResource(data_dir=str(tmp_path / "data"))}
    result = dg.materialize(
        [asset],
        resources=resources,
        run_config={"ops": {"toy__brain__g": {"config": {"k": 5}}}},  # as for any brain asset
    )
    assert result.success
    steps = sorted(e.step_key for e in result.all_events if e.is_step_success)
    assert steps == [
        "toy__brain__g.toy__brain__g__commit",
        "toy__brain__g.toy__brain__g__plan",
        *(f"toy__brain__g.toy__brain__g__search[shard_{i}]" for i in range(3)),
    ]
    (mat,) = result.asset_materializations_for_node("toy__brain__g")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert (meta["N"], meta["k"], meta["shards"], meta["exact"]) == (900, 5, 3, True)
    assert meta["dagster/row_count"] == 900 and meta["run_id"] == result.run_id
    whole = run_brain(spec.model_copy(update={"brain_key": "w", "shards": 1, "k": 5}), store)
    pd.testing.assert_frame_equal(store.load_results("toy", "g"), whole.results)
    assert check_results(store, spec.model_copy(update={"k": 5}))[0]
