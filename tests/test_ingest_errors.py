"""IngestError wording, the skip-bad policy and report summaries."""

import pytest

from dagster_brain.ingest.errors import BadRowPolicy, IngestError, IngestReport, SkippedRow


def test_error_names_file_row_and_sample():
    err = IngestError(
        "logits have 3 values, expected 10", file="manifest.csv", row=12, sample_id="cat_003"
    )
    assert str(err) == "manifest.csv row 12 (sample 'cat_003'): logits have 3 values, expected 10"
    assert (err.file, err.row, err.sample_id) == ("manifest.csv", 12, "cat_003")
    assert isinstance(err, ValueError)


def test_error_leaves_out_unknown_parts():
    assert str(IngestError("no categories", file="a.json")) == "a.json: no categories"
    err = IngestError("bad box", file="a.json", row=2, row_kind="annotation")
    assert str(err) == "a.json annotation 2: bad box"
    assert str(IngestError("oops")) == "oops"


def test_policy_raises_or_records():
    err = IngestError("bad", file="m.csv", row=3, sample_id="x")
    with pytest.raises(IngestError, match="m.csv row 3"):
        BadRowPolicy(skip_bad=False).reject(err)
    policy = BadRowPolicy(skip_bad=True)
    policy.reject(err)
    assert policy.skipped == [SkippedRow("m.csv", 3, "x", "bad")]
    file, row, sample_id, reason = policy.skipped[0][:4]
    assert (file, row, sample_id, reason) == ("m.csv", 3, "x", "bad")


def test_summary_lists_counts_and_skips():
    report = IngestReport(
        dataset="d",
        added=3,
        updated=1,
        skipped=[SkippedRow("m.csv", 2, "b", "duplicate id (first in row 1)")],
        label_fields={"ground_truth": 4},
        embeddings_keys={"clip": 4},
    )
    text = report.summary()
    assert "dataset 'd': 3 samples added, 1 updated, 1 skipped" in text
    assert "ground_truth (4)" in text and "clip (4)" in text
    assert "skipped m.csv row 2 (sample 'b'): duplicate id" in text
