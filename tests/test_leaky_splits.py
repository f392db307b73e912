"""Leaky splits: planted cross-split copies (exact, noisy, shifted) are found and confirmed the
way duplicates are, a copy inside one split is not a leak, the check fails when test leaks into
train (blocking only with ``block``), and bad split inputs are refused by name."""

from __future__ import annotations

import hashlib
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from dagster_brain.algorithms.leaky_splits import UNASSIGNED, find_leaks
from dagster_brain.methods.leaky_splits import (
    LeakySplitsSpec,
    no_test_leaks_check,
    run_leaky_splits,
)

N_TRAIN, N_TEST, N_VAL, N_NONE = 40, 17, 9, 3


def smooth_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A smooth random grey image (an 8x8 pattern upsampled), as uint8 RGB."""
    small = Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8))
    grey = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def embed(path: str) -> np.ndarray:
    """A toy embedding: the centred 8x8 grey thumbnail."""
    grey = np.asarray(Image.open(path).convert("L").resize((8, 8)), dtype=np.float32).ravel()
    return grey - grey.mean()


@pytest.fixture
def planted(store, tmp_path):
    """Train/test/val samples, 3 without a split; test holds an exact, a noisy and a shifted
    copy of train 0, 1, 2; val an exact copy of train 4; train an exact copy of train 5."""
    rng = np.random.default_rng(7)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = []

    def add(split: str | None, pixels: np.ndarray | None = None, copy_of: str | None = None):
        sid = f"s{len(rows):03d}"
        path = folder / f"{sid}.png"
        if copy_of is not None:
            shutil.copyfile(copy_of, path)
        else:
            Image.fromarray(pixels if pixels is not None else smooth_image(rng)).save(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append(
            {
                "sample_id": sid,
                "filepath": str(path),
                "split": split,
                "tags": [split] if split else [],
                "content_hash": digest,
            }
        )
        return sid

    train = [add("train") for _ in range(N_TRAIN)]
    path_of = {r["sample_id"]: r["filepath"] for r in rows}
    base1 = np.asarray(Image.open(path_of[train[1]]), dtype=np.float64)
    base2 = np.asarray(Image.open(path_of[train[2]]))
    test = [add("test", copy_of=path_of[train[0]])]
    noisy = np.clip(base1 + rng.normal(0, 6, base1.shape), 0, 255).astype(np.uint8)
    test.append(add("test", pixels=noisy))
    test.append(add("test", pixels=np.roll(base2, (2, 1), axis=(0, 1))))
    test += [add("test") for _ in range(N_TEST - 3)]
    val = [add("val", copy_of=path_of[train[4]])] + [add("val") for _ in range(N_VAL - 1)]
    within = add("train", copy_of=path_of[train[5]])
    none = [add(None) for _ in range(N_NONE)]
    frame = pd.DataFrame(rows)
    store.write_samples("toy", frame)
    ids = frame["sample_id"].tolist()
    store.write_embeddings("toy", "e", ids, np.stack([embed(p) for p in frame["filepath"]]))
    truth = {
        frozenset((train[0], test[0])),
        frozenset((train[1], test[1])),
        frozenset((train[2], test[2])),
        frozenset((train[4], val[0])),
    }
    return {
        "store": store,
        "train": train,
        "test": test,
        "val": val,
        "within": (train[5], within),
        "none": none,
        "truth": truth,
        "tmp": tmp_path,
    }


def spec(**kw) -> LeakySplitsSpec:
    return LeakySplitsSpec(
        **{"kind": "leaky_splits", "dataset": "toy", "brain_key": "leaks", "embeddings": "e", **kw}
    )


def found_pairs(pairs: pd.DataFrame) -> set[frozenset]:
    return {frozenset(p) for p in zip(pairs["sample_id_a"], pairs["sample_id_b"], strict=True)}


# -- the maths -----------------------------------------------------------------------------


def test_only_cross_split_pairs_within_thresh_are_leaks():
    # a, b in train 0.005 apart (cosine); c (test) a copy of a; d (test) far from everything
    X = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, 0.0], [0.0, 1.0]])
    res = find_leaks(
        X,
        list("abcd"),
        ["train", "train", "test", "test"],
        thresh=0.001,
        split_order=["train", "test"],
    )
    assert res.pairs[["id_a", "split_a", "id_b", "split_b", "path"]].values.tolist() == [
        ["a", "train", "c", "test", "embedding"]
    ]
    items = res.items.set_index("id")
    assert items["leak"].tolist() == [True, False, True, False]
    assert items.loc["c", "nearest_id"] == "a" and items.loc["c", "distance"] == 0.0
    # d does not leak; its nearest item of another split is b (nearest of a and b by angle)
    assert items.loc["d", "nearest_split"] == "train" and items.loc["d", "nearest_id"] == "b"
    assert items.loc["d", "distance"] == pytest.approx(1 - 0.1 / np.hypot(1, 0.1))


def test_the_graph_gives_the_same_leaks():
    from dagster_brain.algorithms.knn_graph import build_knn_graph

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8)).astype(np.float32)
    X[100:110] = X[:10] + 0.001 * rng.normal(size=(10, 8))
    splits = ["train"] * 100 + ["test"] * 20
    ids = [f"i{i:03d}" for i in range(120)]
    plain = find_leaks(X, ids, splits, thresh=0.01)
    shared = find_leaks(X, ids, splits, thresh=0.01, graph=build_knn_graph(X, ids, 16, "cosine"))
    pd.testing.assert_frame_equal(plain.pairs, shared.pairs)
    pd.testing.assert_frame_equal(plain.items, shared.items)
    assert {frozenset(p) for p in zip(plain.pairs["id_a"], plain.pairs["id_b"], strict=True)} == {
        frozenset((ids[i], ids[100 + i])) for i in range(10)
    }


# -- the run -------------------------------------------------------------------------------


def test_planted_copies_are_found_and_confirmed_on_the_images(planted):
    store = planted["store"]
    out = run_leaky_splits(spec(), store)
    pairs = store.load_extra("toy", "leaks", "pairs")
    assert found_pairs(pairs) == planted["truth"]
    how = dict(
        zip(
            map(frozenset, zip(pairs["sample_id_a"], pairs["sample_id_b"], strict=True)),
            pairs["verification"],
            strict=True,
        )
    )
    t, s = planted["train"], planted["test"]
    assert how[frozenset((t[0], s[0]))] == "hash:bytes"
    assert how[frozenset((t[1], s[1]))] in ("shift-ncc", "phash")
    assert how[frozenset((t[2], s[2]))] == "shift-ncc"
    # pairs are oriented train first, then val, then test
    row = pairs.set_index("sample_id_b").loc[s[2]]
    assert (row["sample_id_a"], row["split_a"], row["split_b"]) == (t[2], "train", "test")
    res = out.results.set_index("sample_id")
    a, b = planted["within"]
    assert not res.loc[a, "leak"] and not res.loc[b, "leak"]  # a copy inside train
    assert res.loc[s[1], "nearest_id"] == t[1] and res.loc[s[1], "nearest_split"] == "train"
    assert res["leak"].sum() == 8
    assert (res.loc[planted["none"], "assigned_split"] == UNASSIGNED).all()
    assert out.summary["unassigned"] == N_NONE and out.summary["test_into_train"] == 3
    assert out.summary["splits"] == {"train": 41, "val": 9, "test": 17, UNASSIGNED: 3}
    from dagster_brain.checks import check_results

    assert check_results(store, spec())[0]
    passed, meta = no_test_leaks_check(store, spec())
    assert not passed and meta["leak_pairs"] == 3 and meta["test_items_leaking"] == 3


def test_embedding_distance_alone_without_images(planted):
    store = planted["store"]
    run_leaky_splits(spec(verify=False, thresh=0.02), store)
    pairs = store.load_extra("toy", "leaks", "pairs")
    t, s = planted["train"], planted["test"]
    got = found_pairs(pairs)
    assert {frozenset((t[0], s[0])), frozenset((t[1], s[1]))} <= got <= planted["truth"]
    assert set(pairs["verification"]) == {"embedding"}


def test_the_check_warns_by_default_and_blocks_with_block(planted):
    from dagster_brain.checks import build_run_check
    from dagster_brain.factory import build_brain_asset
    from dagster_brain.resources.store import BrainStoreResource

    store = planted["store"]
    resources = {"store": BrainStoreResource(data_dir=str(store.data_dir))}
    for block, severity in (
        (False, dg.AssetCheckSeverity.WARN),
        (True, dg.AssetCheckSeverity.ERROR),
    ):
        s = spec(block=block)
        result = dg.materialize(
            [build_brain_asset(s), build_run_check(s)], resources=resources, raise_on_error=False
        )
        evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert evals["results_valid"].passed
        leak = evals["no_test_leaks"]
        assert not leak.passed and leak.severity == severity
        assert leak.blocking is block
        assert leak.metadata["leak_pairs"].value == 3
        meta = result.asset_materializations_for_node(f"toy__brain__{s.brain_key}")[0].metadata
        assert "thumbnails" in meta and "leaks_preview" in meta  # the closest pairs, side by side


def test_the_check_passes_when_test_is_clean(planted):
    store = planted["store"]
    clean_test = planted["test"][3:]
    s = spec(splits={"train": planted["train"], "test": clean_test})
    out = run_leaky_splits(s, store)
    passed, meta = no_test_leaks_check(store, s)
    assert passed and meta["leak_pairs"] == 0
    # the copies now sit in "unassigned" (with train's own copy, which the mapping leaves
    # out): they leak into train, which the check does not compare
    assert out.summary["unassigned"] == 3 + N_VAL + 1 + N_NONE
    assert found_pairs(store.load_extra("toy", "leaks", "pairs")) == planted["truth"] | {
        frozenset(planted["within"])
    }


def test_tags_and_a_label_field_give_the_splits(planted):
    store = planted["store"]
    out = run_leaky_splits(spec(splits=["train", "test", "val"]), store)
    assert found_pairs(store.load_extra("toy", "leaks", "pairs")) == planted["truth"]
    assert out.summary["unassigned"] == N_NONE
    frame = store.samples("toy")
    labels = pd.DataFrame(
        {
            "sample_id": frame["sample_id"],
            "label_id": "l" + frame["sample_id"],
            "label": frame["split"].fillna("train"),
        }
    )
    store.write_labels("toy", "fold", "classification", None, labels)
    out = run_leaky_splits(spec(splits="fold"), store)
    assert out.summary["unassigned"] == 0 and out.summary["splits"]["train"] == 41 + N_NONE


def test_bad_split_inputs_are_refused_by_name(planted):
    store = planted["store"]
    with pytest.raises(
        ValueError, match="brain key 'leaks' on 'toy': split field 'fold' is neither a sample field"
    ):
        run_leaky_splits(spec(splits="fold"), store)
    with pytest.raises(ValueError, match="split 'holdout' \\(a tag\\) is on no sample"):
        run_leaky_splits(spec(splits=["train", "holdout"]), store)
    with pytest.raises(ValueError, match="test_split 'holdout' is not a split of the samples"):
        run_leaky_splits(spec(test_split="holdout"), store)
    with pytest.raises(ValueError, match="split 'test' lists sample 'nope', not in the dataset"):
        run_leaky_splits(spec(splits={"train": ["s000"], "test": ["nope"]}), store)
    with pytest.raises(ValueError, match="sample 's000' is listed in splits 'train' and 'test'"):
        run_leaky_splits(spec(splits={"train": ["s000"], "test": ["s000"]}), store)
    with pytest.raises(ValueError, match="'unassigned' is reserved"):
        spec(splits=["train", "unassigned"])
    with pytest.raises(ValueError, match="split 'test' lists no sample ids"):
        spec(splits={"train": ["s000"], "test": []})


def test_yaml_cli_and_api(planted):
    import dagster_brain.api as api
    from dagster_brain.cli import main
    from dagster_brain.specs import parse_specs

    store = planted["store"]
    base = {
        "datasets": [{"name": "toy", "source": {"type": "demo", "name": "digits"}}],
        "embeddings": [{"key": "e", "dataset": "toy"}],
    }
    entry = {"brain_key": "leaks", "dataset": "toy", "kind": "leaky_splits", "embeddings": "e"}
    for splits in ("split", ["train", "test"], {"train": ["s000"], "test": ["s041"]}):
        parsed = parse_specs({**base, "brain_runs": [{**entry, "splits": splits, "block": True}]})
        assert parsed.brain_runs[0].splits == splits and parsed.brain_runs[0].block
    out = CliRunner().invoke(
        main,
        [
            "compute",
            "leaky_splits",
            "toy",
            "--set",
            "embeddings=e",
            "--set",
            "splits=split",
            "--data-dir",
            str(store.data_dir),
        ],
    )
    assert out.exit_code == 0, out.output
    assert (
        f"leaky_splits toy/leaky_splits: {N_TRAIN + N_TEST + N_VAL + 1 + N_NONE} rows" in out.output
    )
    ds = api.Dataset("toy", store)
    index = api.compute_leaky_splits(ds, splits="split", embeddings="e")
    t, s = planted["train"], planted["test"]
    assert set(index.leaks_view().ids) == {x for p in planted["truth"] for x in p}
    assert index.leaks_view().ids[0] in {t[0], s[0], t[4], planted["val"][0]}  # distance 0
    table = index.leaks_view().to_pandas()  # joined with the samples (their own split column)
    assert (table["assigned_split"] == table["split"]).all() and len(table) == 8
    top = CliRunner().invoke(
        main,
        ["top", "leaky_splits", "--dataset", "toy", "-n", "3", "--data-dir", str(store.data_dir)],
    )
    assert top.exit_code == 0, top.output
    assert top.output.splitlines()[1].split()[1] == "0.0"  # an exact copy ranks first
    partners = index.leaks_for_sample(s[2])
    assert partners.ids == (t[2],) and partners.scores["partner_split"].tolist() == ["train"]
    assert index.leaks_for_sample(s[5]).ids == ()
    clean = index.no_leaks_view(ds.view(t[:6]))
    assert clean.ids == (t[3], t[5])
    assert len(index.no_leaks_view()) == len(ds) - 8
    assert api.load_leaky_splits(ds).splits["test"] == N_TEST
    with pytest.raises(KeyError, match="sample 'zzz' is not in leaky-splits run"):
        index.leaks_for_sample("zzz")
