"""Incremental visualization: a refresh keeps the map and places new rows with the stored
reducer; full refits when the placed share, the settings or the reducer file demand it."""

import os

import numpy as np
import pandas as pd
import pytest

from dagster_brain.specs import VisualizationSpec
from dagster_brain.store import Store
from dagster_brain.visualization_runs import (
    HASH_TABLE,
    MODEL_ROLE,
    row_changes,
    run_visualization,
)

D = 16


class Log:
    """Collects what a run logs."""

    def __init__(self):
        self.lines = []

    def info(self, msg, *args):
        self.lines.append(msg % args)

    def warning(self, msg, *args):
        self.lines.append("WARNING " + msg % args)


def clusters(n, seed=0):
    """n rows of 16-d Gaussian clusters (6 centres), ids s0000..."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(6, D)) * 6
    X = (centres[rng.integers(0, 6, size=n)] + rng.normal(size=(n, D))).astype(np.float32)
    return X


def sample_rows(ids):
    return pd.DataFrame(
        {"sample_id": ids, "filepath": [f"/x/{i}.png" for i in ids], "content_hash": ids}
    )


@pytest.fixture
def data(tmp_path):
    """A store with dataset ``d``: 720 vectors (ids s0000...), the first 600 in key ``e``."""
    X = clusters(720)
    ids = [f"s{i:04d}" for i in range(720)]
    store = Store(tmp_path / "store")
    store.write_samples("d", sample_rows(ids[:600]))
    store.write_embeddings("d", "e", ids[:600], X[:600], model="m")
    return store, ids, X


def add(store, ids, X, lo, hi):
    store.write_samples("d", sample_rows(ids[lo:hi]))
    store.update_embeddings("d", "e", ids[lo:hi], X[lo:hi], model="m")


def spec(**kw):
    return VisualizationSpec(
        brain_key=kw.pop("brain_key", "viz"),
        kind="visualization",
        dataset="d",
        embeddings="e",
        **kw,
    )


def points(out):
    return out.results.set_index("sample_id")[["x", "y"]]


def reducer_file(store, key="viz"):
    arts = store.get_run("d", key).artifacts
    return next(a["path"] for a in arts if a.get("role") == MODEL_ROLE)


def reducer_of(out):
    return next(a["path"] for a in out.record.artifacts if a.get("role") == MODEL_ROLE)


def load(path):
    import joblib

    return joblib.load(path)["model"]


def test_umap_refresh_keeps_old_points_and_transforms_new_rows(data):
    store, ids, X = data
    first = run_visualization(spec(), store)
    assert not first.summary["incremental"] and first.record.upstream["update"] is None
    path = reducer_file(store)
    add(store, ids, X, 600, 660)
    out = run_visualization(spec(), store)
    assert out.summary["incremental"] and reducer_file(store) == path
    old, new = points(first), points(out)
    assert len(new) == 660
    np.testing.assert_array_equal(new.loc[ids[:600]].to_numpy(), old.loc[ids[:600]].to_numpy())
    # known answer: the stored UMAP model's own transform of the 60 new rows
    expected = load(path).transform(X[600:660]).astype(np.float32)
    np.testing.assert_array_equal(new.loc[ids[600:660]].to_numpy(np.float32), expected)
    assert out.record.upstream["update"] == {
        "added": 60,
        "removed": 0,
        "transformed": 60,
        "fitted_at": first.record.run_id,
        "since_fit": round(60 / 660, 6),
    }
    assert "s0659" in out.summary["html_path"].read_text()
    hashes = store.load_extra("d", "viz", HASH_TABLE)
    assert sorted(hashes["item_id"]) == ids[:660]


def test_cumulative_share_refit_flag_and_settings_force_refits(data):
    store, ids, X = data
    s = spec(method="pca")
    first = run_visualization(s, store)
    add(store, ids, X, 600, 660)  # 60 / 660 placed since the fit
    second = run_visualization(s, store)
    assert second.summary["update"]["since_fit"] == round(60 / 660, 6)
    pca = load(reducer_file(store))
    np.testing.assert_array_equal(
        points(second).loc[ids[600:660]].to_numpy(np.float32),
        pca.transform(X[600:660]).astype(np.float32),
    )
    add(store, ids, X, 660, 720)  # 120 / 720 = 0.167: still within refit_share 0.2
    third = run_visualization(s, store)
    assert third.summary["update"]["since_fit"] == round(120 / 720, 6)
    assert third.summary["update"]["fitted_at"] == first.record.run_id
    X[:30] += 1.0  # 30 re-embedded rows: 150 / 720 = 0.208 > 0.2
    store.update_embeddings("d", "e", ids[:30], X[:30], model="m")
    fourth = run_visualization(s, store)
    assert not fourth.summary["incremental"] and "20.8%" in fourth.summary["refit_reason"]
    assert fourth.record.upstream["fit"]["fitted_at"] == fourth.record.run_id
    assert not os.path.exists(reducer_of(first))  # the replaced fit's file is gone

    forced = run_visualization(spec(method="pca", refit=True), store)
    assert forced.summary["refit_reason"] == "refit requested"
    # the flag moves no point: the next plain run refreshes the forced fit
    after = run_visualization(s, store)
    assert after.summary["incremental"] and after.summary["update"]["transformed"] == 0
    assert after.summary["update"]["fitted_at"] == forced.record.run_id
    changed = run_visualization(spec(method="pca", seed=7), store)
    assert "map settings changed (seed)" in changed.summary["refit_reason"]


def test_removed_samples_leave_the_map(data):
    store, ids, X = data
    first = run_visualization(spec(method="pca"), store)
    store.delete_samples("d", ids[:10])
    out = run_visualization(spec(method="pca"), store)
    assert out.summary["update"]["removed"] == 10 and out.summary["update"]["transformed"] == 0
    assert sorted(out.results["sample_id"]) == ids[10:600]
    np.testing.assert_array_equal(points(out).to_numpy(), points(first).loc[ids[10:600]])


def test_missing_or_corrupt_reducer_refits_and_a_failed_commit_keeps_the_map(data, monkeypatch):
    store, ids, X = data
    run_visualization(spec(method="pca"), store)
    path = reducer_file(store)
    open(path, "wb").write(b"not a pickle")
    log = Log()
    out = run_visualization(spec(method="pca"), store, log=log)
    assert not out.summary["incremental"] and "could not be read" in out.summary["refit_reason"]
    assert any(line.startswith("WARNING viz: stored reducer unusable") for line in log.lines)
    assert any("full fit of the map: the stored reducer" in line for line in log.lines)
    os.remove(reducer_file(store))
    out = run_visualization(spec(method="pca"), store)
    assert "could not be read" in out.summary["refit_reason"]

    before, path = store.load_results("d", "viz"), reducer_file(store)
    blob = open(path, "rb").read()
    add(store, ids, X, 600, 620)

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "commit_run", broken)
    for s in (spec(method="pca"), spec(method="pca", refit=True)):  # refresh, then refit
        with pytest.raises(RuntimeError, match="disk full"):
            run_visualization(s, store)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(store.load_results("d", "viz"), before)
    assert reducer_file(store) == path and open(path, "rb").read() == blob
    models = store.data_dir / "models" / "d"
    assert sorted(p.name for p in models.iterdir()) == [path.rsplit("/", 1)[-1]]
    assert not list((store.data_dir / "plots" / "d").glob("*.tmp"))


def test_delete_and_rename_take_the_reducer_along(data):
    store, ids, X = data
    run_visualization(spec(method="pca"), store)
    path = reducer_file(store)
    store.rename_run("d", "viz", "viz2")
    assert reducer_file(store, "viz2") == path
    add(store, ids, X, 600, 610)
    out = run_visualization(spec(method="pca", brain_key="viz2"), store)  # still refreshes
    assert out.summary["incremental"] and reducer_file(store, "viz2") == path
    # a new run under the old key gets its own file: the renamed run's stays
    run_visualization(spec(method="pca"), store)
    other = reducer_file(store)
    assert other != path and all(os.path.exists(p) for p in (path, other))
    store.delete_run("d", "viz2")
    assert not os.path.exists(path)
    store.delete_run("d", "viz")
    assert list((store.data_dir / "models" / "d").iterdir()) == []


def test_rename_moves_the_plots_named_after_the_key(data):
    store, _, _ = data
    run_visualization(spec(method="pca"), store)
    plots = store.data_dir / "plots" / "d"
    drawn = (plots / "viz.png").read_bytes()
    store.rename_run("d", "viz", "viz2")
    assert sorted(p.name for p in plots.iterdir()) == ["viz2.html", "viz2.png"]
    assert (plots / "viz2.png").read_bytes() == drawn
    listed = {a["path"] for a in store.get_run("d", "viz2").artifacts if a["type"] == "path"}
    assert {str(plots / "viz2.png"), str(plots / "viz2.html")} <= listed
    # a new run under the old key draws its own plots; deleting it leaves the renamed run's
    run_visualization(spec(method="pca"), store)
    store.delete_run("d", "viz")
    assert sorted(p.name for p in plots.iterdir()) == ["viz2.html", "viz2.png"]
    assert (plots / "viz2.png").read_bytes() == drawn


def test_tsne_places_new_rows_at_their_nearest_fitted_rows(data):
    from sklearn.neighbors import NearestNeighbors

    store, ids, X = data
    first = run_visualization(spec(method="tsne"), store)
    add(store, ids, X, 600, 660)
    out = run_visualization(spec(method="tsne"), store)
    assert out.summary["incremental"]
    fitted = points(first).loc[ids[:600]].to_numpy(np.float32)
    _, nbr = NearestNeighbors(n_neighbors=5).fit(X[:600]).kneighbors(X[600:660])
    expected = fitted[nbr].mean(axis=1)
    np.testing.assert_array_equal(points(out).loc[ids[600:660]].to_numpy(np.float32), expected)
    np.testing.assert_array_equal(points(out).loc[ids[:600]].to_numpy(), points(first).to_numpy())


def test_place_with_a_fitted_map_is_how_rows_beyond_max_fit_were_placed():
    from dagster_brain.algorithms.visualization import place, reduce

    X = clusters(200)
    ids = [f"r{i}" for i in range(200)]
    for method, kw in (("pca", {}), ("tsne", {"perplexity": 10, "pca_dims": 8})):
        r = reduce(X, ids, method, max_fit=150, **kw)
        fitted = np.zeros(200, dtype=bool)
        fitted[np.random.default_rng(51).choice(200, size=150, replace=False)] = True
        rest = np.flatnonzero(~fitted)
        got = place(r.model, X[rest], [ids[i] for i in rest])
        np.testing.assert_allclose(got, r.points[rest], rtol=1e-5, atol=1e-5)
    bad = X[:2].copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite .* for 'r1'"):
        place(r.model, bad, ["r0", "r1"])


def test_row_changes_by_hand():
    old = np.array([1, 2, 3], dtype=np.uint64)
    now = np.array([2, 4, 9], dtype=np.uint64)
    kept, old_pos, placed, removed = row_changes(["a", "b", "c"], old, ["b", "d", "c"], now)
    assert kept.tolist() == [0] and old_pos.tolist() == [1]  # b kept
    assert placed.tolist() == [1, 2] and removed == 1  # d new, c changed; a gone
