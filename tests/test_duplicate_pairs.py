"""Every duplicate pair within the threshold, beside the kept/duplicate split: known answers
(a hand-placed triangle) and brute force (all-pairs distances, connected components)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import sample_frame, write_images

import dagster_brain as fob
from dagster_brain.algorithms.duplicates import (
    ALL_PAIR_COLUMNS,
    find_duplicates,
    group_members,
)
from dagster_brain.cli import main

# Distances come from the float32 kNN (recomputed in float64 only near 0 and near thresh): a
# small euclidean distance between long vectors carries a float32 error of ~1e-4 relative.
TOL = {"rel": 1e-3, "abs": 1e-5}

# -- brute force ---------------------------------------------------------------------------


def brute_distances(X: np.ndarray, metric: str) -> np.ndarray:
    """All-pairs float64 distances (the formulas of the float64 recomputation)."""
    X = X.astype(np.float64)
    if metric == "cosine":
        norm = np.linalg.norm(X, axis=1)
        return np.clip(1.0 - (X @ X.T) / np.outer(norm, norm), 0.0, 2.0)
    return np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))


def brute_pairs(X: np.ndarray, ids: list[str], thresh: float, metric: str) -> dict:
    """{(id_a, id_b): distance} for every pair i < j (input order) within ``thresh``."""
    D = brute_distances(X, metric)
    i, j = np.nonzero(np.triu(D <= thresh, k=1))
    return {(ids[a], ids[b]): float(D[a, b]) for a, b in zip(i, j, strict=True)}


def brute_components(ids: list[str], pairs) -> set[frozenset]:
    """Connected components (size >= 2) of the pair graph, by union-find."""
    parent = {i: i for i in ids}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[root(a)] = root(b)
    comps: dict[str, set[str]] = {}
    for i in ids:
        comps.setdefault(root(i), set()).add(i)
    return {frozenset(c) for c in comps.values() if len(c) > 1}


def table_pairs(frame) -> dict:
    return {
        (a, b): float(d)
        for a, b, d in zip(frame["id_a"], frame["id_b"], frame["distance"], strict=True)
    }


def split_pairs(result) -> set[frozenset]:
    """The pairs the kept/duplicate split shows (duplicate -> its kept item)."""
    return {frozenset((k, d)) for k, members in result.neighbors_map.items() for d, _ in members}


def planted(seed: int, n: int = 240, dim: int = 12):
    """Random vectors with planted close copies: 30 pairs and 12 triples (two copies of one
    original, so a copy pair can be absorbed by its original)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim))
    copies, truth = [], []
    for k in range(30):
        copies.append(X[k] + 0.03 * rng.normal(size=dim))
        truth.append((k, n + len(copies) - 1))
    for k in range(30, 42):
        for _ in range(2):
            copies.append(X[k] + 0.03 * rng.normal(size=dim))
            truth.append((k, n + len(copies) - 1))
        truth.append((n + len(copies) - 2, n + len(copies) - 1))
    X = np.concatenate([X, np.asarray(copies)]).astype(np.float32)
    ids = [f"i{r:03d}" for r in range(len(X))]
    return X, ids, {frozenset((ids[a], ids[b])) for a, b in truth}


def thresh_for(X: np.ndarray, metric: str) -> float:
    """A threshold above most planted distances, with natural pairs and chains too, and no
    pair within 1e-6 of it (so float rounding cannot move a pair across it)."""
    D = brute_distances(X, metric)
    d = np.sort(D[np.triu_indices(len(X), 1)])
    t = float(d[int(0.004 * len(d))])  # about 0.4 % of all pairs
    while np.abs(d - t).min() < 1e-6:
        t *= 1.0 + 1e-5
    return t


# -- the absorbed pair ---------------------------------------------------------------------


def _triangle():
    """c, a, b on a line at 0, 0.25, 0.5 (all within 0.75), and two far points."""
    X = np.zeros((5, 2), np.float32)
    X[:, 0] = [0.0, 0.25, 0.5, 5.0, 9.0]
    return X, ["c", "a", "b", "x", "y"]


def test_a_pair_absorbed_by_a_third_item_is_in_the_pairs_table():
    X, ids = _triangle()
    res = find_duplicates(X, ids, thresh=0.75, metric="euclidean")
    # the split: c kept, a and b both its duplicates; the pair (a, b) appears nowhere in it
    assert res.kept_ids == ["c", "x", "y"] and res.duplicate_ids == ["a", "b"]
    assert split_pairs(res) == {frozenset("ca"), frozenset("cb")}
    shown = zip(res.pairs["id_a"], res.pairs["id_b"], strict=True)
    assert frozenset("ab") not in {frozenset(p) for p in shown}
    # every pair within the threshold, nearest first, ties in input order of id_a
    assert list(res.all_pairs.columns) == ALL_PAIR_COLUMNS
    assert res.all_pairs[["id_a", "id_b"]].values.tolist() == [["c", "a"], ["a", "b"], ["c", "b"]]
    assert res.all_pairs["distance"].tolist() == pytest.approx([0.25, 0.25, 0.5], abs=1e-6)
    assert res.truncated_rows == 0
    # the group: b's nearest in-group item is a, not the kept c
    view = group_members(res)
    assert view["group"].tolist() == [0, 0, 0]
    assert view[["id", "type", "kept_id", "nearest_id"]].values.tolist() == [
        ["c", "nearest", "c", "a"],
        ["a", "duplicate", "c", "c"],
        ["b", "duplicate", "c", "a"],
    ]
    assert view["distance"].tolist() == pytest.approx([0.25, 0.25, 0.25], abs=1e-6)


def test_a_kept_item_without_duplicates_of_its_own_is_in_its_group():
    # chain p0 - p1 - p2 (spacing 1, thresh 1.5): p0 and p2 kept, p1 their duplicate
    X = np.zeros((3, 2), np.float32)
    X[:, 0] = [0.0, 1.0, 2.0]
    res = find_duplicates(X, ["p0", "p1", "p2"], thresh=1.5, metric="euclidean")
    assert res.kept_ids == ["p0", "p2"] and res.neighbors_map == {"p0": [("p1", 1.0)]}
    assert set(table_pairs(res.all_pairs)) == {("p0", "p1"), ("p1", "p2")}
    view = group_members(res)
    assert sorted(view["id"]) == ["p0", "p1", "p2"] and view["group"].nunique() == 1
    assert view.set_index("id").loc["p2", ["type", "nearest_id"]].tolist() == ["nearest", "p1"]


# -- brute force ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", [1, 2])
def test_pairs_equal_all_pairs_brute_force(metric, seed):
    X, ids, _ = planted(seed)
    t = thresh_for(X, metric)
    res = find_duplicates(X, ids, thresh=t, metric=metric)
    want = brute_pairs(X, ids, t, metric)
    got = table_pairs(res.all_pairs)
    assert len(got) == len(res.all_pairs)  # each unordered pair once
    assert set(got) == set(want) and len(want) > 100
    assert [got[p] for p in want] == pytest.approx(list(want.values()), **TOL)
    d = res.all_pairs["distance"].to_numpy()
    assert (np.diff(d) >= 0).all()
    row = {i: r for r, i in enumerate(ids)}
    assert all(row[a] < row[b] for a, b in got)
    # the split is a subset: duplicate -> kept item pairs are pairs
    assert {frozenset(p) for p in split_pairs(res)} <= {frozenset(p) for p in got}
    assert res.truncated_rows == 0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_groups_are_the_connected_components_of_the_pairs(metric):
    X, ids, _ = planted(3)
    t = thresh_for(X, metric)
    res = find_duplicates(X, ids, thresh=t, metric=metric)
    want = brute_components(ids, brute_pairs(X, ids, t, metric))
    assert {frozenset(g) for g in res.groups} == want
    view = group_members(res)
    assert {frozenset(g["id"]) for _, g in view.groupby("group")} == want
    # each member's nearest in-group item and distance, by brute force
    D = brute_distances(X, metric)
    row = {i: r for r, i in enumerate(ids)}
    for _, g in view.groupby("group"):
        members = [row[i] for i in g["id"]]
        sub = D[np.ix_(members, members)] + np.diag(np.full(len(members), np.inf))
        assert g["distance"].tolist() == pytest.approx(sub.min(1).tolist(), **TOL)
        for k, near in enumerate(g["nearest_id"]):
            assert row[near] in members
            assert D[members[k], row[near]] == pytest.approx(sub[k].min(), **TOL)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_fraction_lists_every_pair_within_the_threshold_it_chose(metric):
    X, ids, _ = planted(4)
    res = find_duplicates(X, ids, fraction=0.15, metric=metric)
    want = brute_pairs(X, ids, res.thresh, metric)
    assert set(table_pairs(res.all_pairs)) == set(want) and len(want) > 0


def test_truncated_neighbour_lists_are_reported_and_only_lose_pairs_between_them():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(120, 4)).astype(np.float32)
    ids = [f"s{i:03d}" for i in range(120)]
    t, max_k = 0.3, 16  # the smallest cap (the first kNN pass holds 16 neighbours)
    res = find_duplicates(X, ids, thresh=t, metric="cosine", max_k=max_k)
    D = brute_distances(X, "cosine")
    np.fill_diagonal(D, np.inf)
    degree = (D <= t).sum(1)
    assert res.truncated_rows == int((degree >= max_k).sum()) > 0
    assert "truncated_rows=" in repr(res)
    want = brute_pairs(X, ids, t, "cosine")
    got = set(table_pairs(res.all_pairs))
    assert got <= set(want)
    row = {i: r for r, i in enumerate(ids)}
    missing = set(want) - got
    assert all(degree[row[a]] >= max_k and degree[row[b]] >= max_k for a, b in missing)
    assert set(table_pairs(find_duplicates(X, ids, thresh=t).all_pairs)) == set(want)


def test_planted_pairs_the_split_loses_are_all_in_the_pairs_table():
    X, ids, truth = planted(6)
    res = find_duplicates(X, ids, thresh=0.1, metric="cosine")
    close = {frozenset(p) for p in brute_pairs(X, ids, 0.1, "cosine")}
    within = truth & close
    found = {frozenset(p) for p in table_pairs(res.all_pairs)}
    assert within and within <= found
    assert len(truth & split_pairs(res)) < len(within)  # copy pairs absorbed by originals


# -- extremes ------------------------------------------------------------------------------


def test_extreme_thresholds():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    X[10] = X[3]  # an exact copy
    ids = [f"s{i:02d}" for i in range(60)]
    zero = find_duplicates(X, ids, thresh=0.0, metric="euclidean")
    assert table_pairs(zero.all_pairs) == {("s03", "s10"): 0.0}
    assert group_members(zero)["id"].tolist() == ["s03", "s10"]
    huge = find_duplicates(X, ids, thresh=1e6, metric="euclidean")
    assert len(huge.all_pairs) == 60 * 59 // 2 and huge.truncated_rows == 0
    assert len(huge.groups) == 1 and len(group_members(huge)) == 60
    every = find_duplicates(X, ids, fraction=1.0)
    assert len(every.all_pairs) == 60 * 59 // 2
    assert len(find_duplicates(X, ids, fraction=0.0).all_pairs) == 1
    big = np.concatenate([X] * 5) + rng.normal(size=(300, 5)).astype(np.float32)
    dense = find_duplicates(big, [f"b{i}" for i in range(300)], thresh=10.0)  # > max_k each
    assert dense.truncated_rows == 300 and len(dense.all_pairs) >= 300 * 256 // 2
    for res in (
        find_duplicates(X[:1], ids[:1], thresh=0.5),
        find_duplicates(X[:2] * 0 + 1, ids[:2], thresh=np.inf),
    ):
        assert list(res.all_pairs.columns) == ALL_PAIR_COLUMNS
        assert list(group_members(res).columns)[:3] == ["group", "id", "type"]
    assert len(find_duplicates(X[:1], ids[:1], thresh=0.5).all_pairs) == 0


# -- the index, the brain run and the CLI ----------------------------------------------------


@pytest.fixture
def triangle_index(store):
    X, _ = _triangle()
    store.write_samples("toy", sample_frame([f"/img/{i}.png" for i in range(5)]))
    index = fob.compute_similarity(
        fob.Dataset("toy", store), embeddings=X, brain_key="sim", metric="euclidean"
    )
    yield index
    index.close()


def test_index_duplicate_pairs_and_view(triangle_index):
    index = triangle_index  # samples s000..s004 = c, a, b, x, y
    index.find_duplicates(thresh=0.75)
    assert index.neighbors_map == {"s000": [("s001", 0.25), ("s002", 0.5)]}
    pairs = index.duplicate_pairs
    assert pairs[["id_a", "id_b"]].values.tolist() == [
        ["s000", "s001"],
        ["s001", "s002"],
        ["s000", "s002"],
    ]
    view = index.duplicates_view()
    assert list(view.columns) == [
        "group",
        "id",
        "sample_id",
        "type",
        "kept_id",
        "nearest_id",
        "distance",
    ]
    assert view["nearest_id"].tolist() == ["s001", "s000", "s001"]
    assert set(view["type"]) == {"nearest", "duplicate"}


def test_brain_run_stores_every_pair_and_the_cli_prints_them(triangle_index, store):
    out = fob.compute_near_duplicates(
        fob.Dataset("toy", store), similarity="sim", thresh=0.75, verify=False
    )
    assert out.summary["pairs"] == 3 and out.record.config["chosen"]["pairs"] == 3
    stored = store.load_extra("toy", "duplicates", "pairs")
    assert list(stored.columns) == ["sample_id_a", "sample_id_b", "distance"]
    assert stored[["sample_id_a", "sample_id_b"]].values.tolist() == [
        ["s000", "s001"],
        ["s001", "s002"],
        ["s000", "s002"],
    ]
    assert stored["distance"].tolist() == pytest.approx([0.25, 0.25, 0.5], abs=1e-6)
    # the groups table is unchanged: group, role, nearest kept item
    groups = store.load_results("toy", "duplicates")
    assert groups["role"].tolist() == ["kept", "duplicate", "duplicate"]
    cli = CliRunner().invoke(
        main,
        ["duplicates", "sim", "--thresh", "0.75", "--no-verify", "--pairs"]
        + ["--brain-key", "dups2", "--data-dir", str(store.data_dir)],
        catch_exceptions=False,
    )
    assert cli.exit_code == 0 and "1 groups, 3 pairs" in cli.stdout
    lines = cli.stdout.split("3 pairs (nearest first):")[1].strip().splitlines()
    assert lines[0].split() == ["sample_id_a", "sample_id_b", "distance"]
    assert [ln.split()[:2] for ln in lines[1:]] == [
        ["s000", "s001"],
        ["s001", "s002"],
        ["s000", "s002"],
    ]


def test_verified_run_pairs_have_distances(store, tmp_path):
    paths = write_images(tmp_path / "img", 20)
    shutil.copy(paths[3], tmp_path / "img" / "copy.png")
    paths.append(str(tmp_path / "img" / "copy.png"))
    frame = sample_frame(paths)
    frame.loc[20, "content_hash"] = frame.loc[3, "content_hash"]  # byte copy
    store.write_samples("pics", frame)
    X = np.random.default_rng(0).normal(size=(21, 8)).astype(np.float32)
    X[20] = X[3] + 1e-3
    ds = fob.Dataset("pics", store)
    fob.compute_similarity(ds, embeddings=X, brain_key="sim").close()
    out = fob.compute_near_duplicates(ds, similarity="sim")
    assert out.summary["method"] == "auto+verified"
    stored = store.load_extra("pics", "duplicates", "pairs")
    hit = stored[(stored["sample_id_a"] == "s003") & (stored["sample_id_b"] == "s020")]
    assert len(hit) == 1 and 0 < hit["distance"].iloc[0] < 1e-3
    assert stored["distance"].notna().all()
