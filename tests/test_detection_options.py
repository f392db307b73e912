"""Mistakenness options that do not apply are refused, naming the brain key and the option."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import sample_frame
from pydantic import ValidationError

from dagster_brain.scores import run_mistakenness
from dagster_brain.specs import MistakennessSpec


def spec(**kw) -> MistakennessSpec:
    base = {"brain_key": "mk", "kind": "mistakenness", "dataset": "toy", "pred_field": "pred"}
    return MistakennessSpec(**{**base, "label_field": "gt", **kw})


@pytest.mark.parametrize(
    ("kw", "option"),
    [
        ({"method": "confident_learning", "iou_thresh": 0.6}, "iou_thresh"),
        ({"method": "confident_learning", "copy_missing": True}, "copy_missing"),
        ({"method": "reference", "spurious_rule": "no_overlap"}, "spurious_rule"),
        ({"method": "reference", "loc_iou_thresh": 0.1}, "loc_iou_thresh"),
        ({"method": "reference", "missing_conf": "auto"}, "missing_conf: auto"),
        ({"loc_iou_thresh": 0.6, "iou": 0.5}, "loc_iou_thresh"),
    ],
)
def test_spec_refuses_at_load(kw, option):
    with pytest.raises(ValidationError, match=f"brain key 'mk': option '{option}'"):
        spec(**kw)


def test_spec_parameters():
    s = spec(iou=0.4, missing_conf="auto", spurious_rule="unmatched")
    assert s.iou_thresh == 0.4 and s.detection_options() == [
        "iou_thresh",
        "missing_conf",
        "spurious_rule",
    ]
    assert spec(method="reference", missing_conf=0.9, iou_thresh=0.6).missing_conf == 0.9


def _fields(store, kind: str) -> None:
    store.write_samples("toy", sample_frame(["/img/0.png", "/img/1.png"]))
    ids = ["s000", "s001"]
    if kind == "classification":
        gt = pd.DataFrame({"sample_id": ids, "label_id": ["g0", "g1"], "label": ["a", "b"]})
        pred = gt.assign(label_id=["p0", "p1"], confidence=0.9)
    else:
        box = [0.1, 0.1, 0.2, 0.2]
        gt = pd.DataFrame(
            {"sample_id": ids, "label_id": ["g0", "g1"], "label": ["a", "b"], "box": [box, box]}
        )
        pred = gt.assign(label_id=["p0", "p1"], confidence=0.9)
    store.write_labels("toy", "gt", kind, ["a", "b"], gt)
    store.write_labels("toy", "pred", kind, ["a", "b"], pred)


@pytest.mark.parametrize("option", ["iou_thresh", "missing_conf", "spurious_rule", "copy_missing"])
def test_detection_options_refused_on_classification(store, option):
    _fields(store, "classification")
    value = {
        "iou_thresh": 0.5,
        "missing_conf": 0.9,
        "spurious_rule": "unmatched",
        "copy_missing": True,
    }
    with pytest.raises(ValueError, match=f"brain key 'mk': option '{option}' applies to det"):
        run_mistakenness(spec(**{option: value[option]}), store)


def test_confident_learning_refused_on_detections(store):
    _fields(store, "detections")
    with pytest.raises(ValueError, match="brain key 'mk': option 'method: confident_learning'"):
        run_mistakenness(spec(method="confident_learning"), store)


def test_detection_use_logits_asked_without_logits(store):
    _fields(store, "detections")
    with pytest.raises(ValueError, match="brain key 'mk'.*'p0' of sample 's000' has no logits"):
        run_mistakenness(spec(use_logits=True), store)
    out = run_mistakenness(spec(), store)  # not asked: confidences, no error
    assert out.record.method == "detection"
    assert out.record.config["resolved"]["use_logits"] is False
    ref = run_mistakenness(spec(brain_key="mr", method="reference"), store)
    assert ref.record.method == "detection_reference"
    assert ref.results["mistakenness"].tolist() == pytest.approx([(1 - 0.9) / 2] * 2)
