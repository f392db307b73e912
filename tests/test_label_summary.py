"""Label summary: hand-counted class tables per split, the imbalance ratio, one class, and the
classes with unusually many flagged mistakes from a stored mistakenness run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import sample_frame
from scipy.stats import binom

from dagster_brain.algorithms.label_summary import (
    class_counts,
    class_mistakes,
    imbalance_ratio,
    split_column,
)
from dagster_brain.api import Dataset, compute_label_summary
from dagster_brain.checks import check_results
from dagster_brain.methods import METHODS
from dagster_brain.methods.label_summary import LabelSummarySpec, run_label_summary
from dagster_brain.runs import RunContext, commit_outcome
from dagster_brain.specs import MistakennessSpec

# s0..s9: label and split, counted by hand below
LABELS = ["cat", "cat", "cat", "dog", "dog", "bird", "cat", "dog", "cat", "dog"]
SPLITS = ["train"] * 6 + ["test"] * 3 + [None]


def _labels(ids, labels):
    return pd.DataFrame(
        {"sample_id": ids, "label_id": [f"l{i}" for i in range(len(ids))], "label": labels}
    )


@pytest.fixture
def small(store, tmp_path):
    frame = sample_frame([str(tmp_path / f"{i}.png") for i in range(10)])
    frame["split"] = SPLITS
    ids = frame["sample_id"].tolist()
    classes = ["cat", "dog", "bird", "fish"]  # fish: declared, never used
    store.write_samples(
        "pets", frame, labels={"ground_truth": ("classification", classes, _labels(ids, LABELS))}
    )
    return store, ids


def test_hand_counted_table(small):
    store, _ = small
    spec = LabelSummarySpec(kind="label_summary", dataset="pets", brain_key="ls")
    out = run_label_summary(spec, store)
    res = out.results.set_index("label")
    assert res.index.tolist() == ["cat", "dog", "bird", "fish"]
    assert res["count"].tolist() == [5, 4, 1, 0]
    assert res["n_train"].tolist() == [3, 2, 1, 0]
    assert res["n_test"].tolist() == [2, 1, 0, 0]
    assert res["n_unsplit"].tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(res["share"], [0.5, 0.4, 0.1, 0.0])
    np.testing.assert_allclose(res["ratio_to_smallest"], [5, 4, 1, 0])
    assert out.summary["imbalance_ratio"] == 5.0 and out.summary["empty_classes"] == ["fish"]
    assert out.summary["mistakenness"] is None and "mistakes_high" not in res
    # the check counts one row per class (declared ones included)
    passed, meta = check_results(store, spec)
    assert passed and meta["expected_rows"] == 4
    assert METHODS["label_summary"].asset_metadata(out)["imbalance_ratio"] == 5.0


def test_split_from_a_label_field_or_none(small):
    store, ids = small
    halves = _labels(ids, ["a"] * 5 + ["b"] * 5)
    store.write_labels("pets", "half", "classification", ["a", "b"], halves)
    by_field = compute_label_summary(Dataset("pets", store), split_field="half", brain_key="h")
    res = by_field.results.set_index("label")
    assert res["n_a"].tolist() == [3, 2, 0, 0] and res["n_b"].tolist() == [2, 2, 1, 0]
    plain = compute_label_summary(Dataset("pets", store), split_field=None, brain_key="p")
    assert not [c for c in plain.results if c.startswith("n_")]


def test_one_class(store, tmp_path):
    store.write_samples(
        "mono",
        sample_frame([str(tmp_path / f"{i}.png") for i in range(3)]),
        labels={
            "ground_truth": ("classification", None, _labels(["s000", "s001", "s002"], ["x"] * 3))
        },
    )
    spec = LabelSummarySpec(kind="label_summary", dataset="mono", brain_key="ls")
    out = run_label_summary(spec, store)
    assert out.results[["label", "count", "share"]].values.tolist() == [["x", 3, 1.0]]
    assert out.summary["imbalance_ratio"] == 1.0
    assert check_results(store, spec)[0]


def test_algorithm_edges():
    assert imbalance_ratio([]) == 0.0 and imbalance_ratio([0, 7]) == 1.0
    assert split_column("Val 2017") == "n_val_2017"
    empty = class_counts(pd.DataFrame({"sample_id": [], "label": []}), ["a"])
    assert empty["count"].tolist() == [0] and empty["share"].tolist() == [0.0]


def _mistakes_dataset(store, tmp_path):
    """3 classes x 100 samples; flagged mistakes 2 (a), 3 (b), 30 (c)."""
    n = 300
    frame = sample_frame([str(tmp_path / f"{i}.png") for i in range(n)])
    ids = frame["sample_id"].tolist()
    labels = ["a"] * 100 + ["b"] * 100 + ["c"] * 100
    store.write_samples(
        "m",
        frame,
        labels={"ground_truth": ("classification", ["a", "b", "c"], _labels(ids, labels))},
    )
    flagged = np.zeros(n, bool)
    flagged[[0, 1]] = True
    flagged[[100, 101, 102]] = True
    flagged[200:230] = True
    results = pd.DataFrame(
        {
            "sample_id": ids,
            "mistakenness": np.where(flagged, 0.9, 0.1),
            "possible_label_issue": flagged,
            "label": labels,
            "prediction": labels,
        }
    )
    mspec = MistakennessSpec(kind="mistakenness", dataset="m", brain_key="mist", pred_field="p")
    commit_outcome(mspec, store, RunContext(), results, method="confident_learning", upstream={})
    return ids


def test_classes_with_unusually_many_mistakes(store, tmp_path):
    _mistakes_dataset(store, tmp_path)
    spec = LabelSummarySpec(kind="label_summary", dataset="m", brain_key="ls")
    out = run_label_summary(spec, store)
    res = out.results.set_index("label")
    assert out.summary["mistakenness"] == "mist"  # found: the run on ground_truth
    assert res["label_issues"].tolist() == [2, 3, 30]
    np.testing.assert_allclose(res["issue_rate"], [0.02, 0.03, 0.30])
    np.testing.assert_allclose(res["mistakenness_mean"], [0.116, 0.124, 0.34])
    assert res["mistakes_high"].tolist() == [False, False, True]
    # by hand: at the overall rate 35/300, 30 of 100 is far in the tail; 3 of 100 is not
    assert binom.sf(29, 100, 35 / 300) < 0.01 / 3 < binom.sf(2, 100, 35 / 300)
    assert out.summary["mistakes_high"] == ["c"]
    assert out.record.upstream["mistakenness"]["brain_key"] == "mist"
    assert check_results(store, spec)[0]


def test_one_class_has_no_unusual_mistakes():
    got = class_mistakes(
        pd.DataFrame(
            {
                "label": ["x"] * 10,
                "mistakenness": [0.9] * 9 + [0.1],
                "flagged": [True] * 9 + [False],
            }
        ),
        ["x"],
    )
    assert got["label_issues"].tolist() == [9] and got["mistakes_high"].tolist() == [False]


def test_a_named_run_of_another_kind_is_refused(small):
    store, _ = small
    spec = LabelSummarySpec(kind="label_summary", dataset="pets", brain_key="ls")
    run_label_summary(spec, store)
    bad = LabelSummarySpec(kind="label_summary", dataset="pets", brain_key="ls2", mistakenness="ls")
    with pytest.raises(ValueError, match="brain key 'ls2': 'ls' on 'pets' is a label_summary run"):
        run_label_summary(bad, store)


def test_detections_count_objects(store, tmp_path):
    frame = sample_frame([str(tmp_path / f"{i}.png") for i in range(3)])
    boxes = pd.DataFrame(
        {
            "sample_id": ["s000", "s000", "s000", "s001", "s002"],
            "label_id": [f"b{i}" for i in range(5)],
            "label": ["car", "car", "person", "car", "person"],
            "box": [[0.1, 0.1, 0.2, 0.2]] * 5,
        }
    )
    store.write_samples("street", frame, labels={"boxes": ("detections", None, boxes)})
    out = compute_label_summary(Dataset("street", store), label_field="boxes", split_field=None)
    assert out.results[["label", "count"]].values.tolist() == [["car", 3], ["person", 2]]
    assert out.summary["imbalance_ratio"] == 1.5
