"""Label summary: one row per class of a label field with its counts per split, its share and
ratio to the smallest class, and, when the dataset has a mistakenness run on that field, how
many likely mistakes it holds and whether that is unusually many."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pandas as pd
from pydantic import Field

from dagster_brain.algorithms.label_summary import (
    class_counts,
    class_list,
    class_mistakes,
    imbalance_ratio,
)
from dagster_brain.methods.base import BrainMethod, Input, RunField
from dagster_brain.runs import _LOG, RunContext, RunOutcome, commit_outcome
from dagster_brain.specs import NAME, BrainRunSpec
from dagster_brain.store import Store

SAMPLE_SPLIT = "split"  # the samples' own split column
MISTAKENNESS_KIND = "mistakenness"
FLAG_SCORE = 0.5  # a label counts as a likely mistake above this score when the run flags none


class LabelSummarySpec(BrainRunSpec):
    """``compute_label_summary``: per class of ``label_field``, its label counts (per split
    of ``split_field``: the samples' ``split`` column or a classification field; None: no
    split), and its likely mistakes from the mistakenness run ``mistakenness`` (None: the
    newest mistakenness run on ``label_field``, if any)."""

    version: ClassVar[str] = "1"
    kind: Literal["label_summary"]
    label_field: str = Field(default="ground_truth", pattern=NAME)
    split_field: str | None = Field(default=SAMPLE_SPLIT, pattern=NAME)
    mistakenness: str | None = Field(default=None, pattern=NAME)


def _inputs(spec: LabelSummarySpec) -> list[Input]:
    """The samples and labels, and the named mistakenness run."""
    out = [Input("samples")]
    return out + [Input("brain", spec.mistakenness)] if spec.mistakenness else out


def _labels(store: Store, spec: LabelSummarySpec, ids: list[str] | None):
    kind, declared = store.label_field(spec.dataset, spec.label_field)
    labels = store.labels(spec.dataset, spec.label_field)
    if ids is not None:
        labels = labels[labels["sample_id"].isin(set(ids))]
    labels = labels[labels["label"].notna()]
    return kind, class_list(labels["label"].astype(str).tolist(), declared), labels


def _expected_rows(store: Store, spec: LabelSummarySpec) -> int | None:
    """One row per class: the declared classes and every other label found."""
    return len(_labels(store, spec, None)[1])


def _splits(store: Store, spec: LabelSummarySpec, ids: list[str] | None) -> pd.Series | None:
    """Each sample's split (by sample id), or None when there is no split to count by."""
    if spec.split_field is None:
        return None
    if spec.split_field == SAMPLE_SPLIT:
        samples = store.samples(spec.dataset, ids=ids)
        split = samples.set_index("sample_id")["split"]
        return None if split.isna().all() else split
    kind, _ = store.label_field(spec.dataset, spec.split_field)
    if kind != "classification":
        raise ValueError(
            f"brain key {spec.brain_key!r}: split field {spec.split_field!r} holds {kind}; "
            "a split is one classification label per sample"
        )
    rows = store.labels(spec.dataset, spec.split_field).drop_duplicates("sample_id")
    return rows.set_index("sample_id")["label"]


def find_mistakenness(store: Store, spec: LabelSummarySpec) -> str | None:
    """The brain key of the mistakenness run read: the spec's, or the newest on its label
    field (None: there is none)."""
    if spec.mistakenness is not None:
        record = store.get_run(spec.dataset, spec.mistakenness)
        if record.kind != MISTAKENNESS_KIND:
            raise ValueError(
                f"brain key {spec.brain_key!r}: {spec.mistakenness!r} on {spec.dataset!r} is "
                f"a {record.kind} run, not a mistakenness run"
            )
        return spec.mistakenness
    runs = store.list_runs(spec.dataset, kind=MISTAKENNESS_KIND)
    found = []
    for key, created in zip(runs["brain_key"], runs["created_at"], strict=True):
        record = store.get_run(spec.dataset, key)
        if record.config.get("label_field", "ground_truth") == spec.label_field:
            found.append((created, key))
    return max(found)[1] if found else None


def _mistakes(store: Store, dataset: str, key: str, ids: list[str] | None) -> pd.DataFrame:
    """(label, mistakenness, flagged) of each label a mistakenness run scored: its objects
    (detections) or its samples (classification)."""
    record = store.get_run(dataset, key)
    rows = (
        store.load_extra(dataset, key, "objects")
        if "objects" in record.table_names()
        else store.load_results(dataset, key)
    )
    if ids is not None and len(rows):
        rows = rows[rows["sample_id"].isin(set(ids))]
    rows = rows[rows["mistakenness"].notna() & rows["label"].notna()]
    if "possible_label_issue" in rows and rows["possible_label_issue"].eq(True).any():
        flagged = rows["possible_label_issue"].eq(True)
    else:  # a run that flags nothing itself (the reference rule, detections): by score
        flagged = rows["mistakenness"] > FLAG_SCORE
    return pd.DataFrame(
        {
            "label": rows["label"].astype(str),
            "mistakenness": rows["mistakenness"],
            "flagged": flagged,
        }
    )


def run_label_summary(
    spec: LabelSummarySpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    """``compute_label_summary``: one row per class of the label field."""
    kind, classes, labels = _labels(store, spec, ids)
    if not classes:
        raise ValueError(
            f"brain key {spec.brain_key!r}: label field {spec.label_field!r} of "
            f"{spec.dataset!r} has no labels and no class list"
        )
    results = class_counts(labels, classes, _splits(store, spec, ids))
    upstream: dict[str, Any] = {
        "labels": {
            "label_field": spec.label_field,
            "split_field": spec.split_field,
            "data_version": store.data_version(spec.dataset, ids),
        }
    }
    key = find_mistakenness(store, spec)
    if key is not None:
        mistakes = class_mistakes(_mistakes(store, spec.dataset, key, ids), classes)
        results = pd.concat([results, mistakes], axis=1)
        mrec = store.get_run(spec.dataset, key)
        upstream["mistakenness"] = {
            "brain_key": key,
            "run_id": mrec.run_id,
            "created_at": str(mrec.created_at),
        }
    ratio = imbalance_ratio(results["count"].tolist())
    empty = results.loc[results["count"] == 0, "label"].tolist()
    high = results.loc[results["mistakes_high"], "label"].tolist() if key else []
    log.info(
        "%s: %d classes of %r (%s), %d labels, imbalance %.2f%s",
        spec.brain_key,
        len(results),
        spec.label_field,
        kind,
        int(results["count"].sum()),
        ratio,
        f"; unusually many mistakes in {high}" if high else "",
    )
    sample_ids = sorted(set(labels["sample_id"].astype(str)))
    context = RunContext(run_id=run_id, log=log, ids=ids, artifacts=tuple(artifacts or ()))
    return commit_outcome(
        spec,
        store,
        context,
        results,
        method="counts",
        upstream=upstream,
        summary={
            "classes": len(results),
            "labels": int(results["count"].sum()),
            "imbalance_ratio": ratio,
            "empty_classes": empty,
            "mistakenness": key,
            "mistakes_high": high,
        },
        sample_ids=sample_ids,
    )


def _metadata(outcome: RunOutcome) -> dict[str, Any]:
    import dagster as dg

    from dagster_brain.metadata import rows_table

    s, res = outcome.summary, outcome.results
    meta: dict[str, Any] = {
        "dagster/row_count": len(res),
        "labels": s["labels"],
        "imbalance_ratio": float(s["imbalance_ratio"]),
        "empty_classes": dg.MetadataValue.json(s["empty_classes"]),
        "classes": rows_table(res, list(res.columns)),
    }
    if s.get("mistakenness"):
        meta["mistakenness_run"] = s["mistakenness"]
        meta["mistakes_high"] = dg.MetadataValue.json(s["mistakes_high"])
    return meta


METHOD = BrainMethod(
    kind="label_summary",
    spec=LabelSummarySpec,
    run=run_label_summary,
    inputs=_inputs,
    expected_rows=_expected_rows,
    score=None,
    summary="Label counts per class and split, class imbalance, classes with many mistakes.",
    run_fields=(RunField("split_field", str, "samples' 'split' column or a label field"),),
    unique_ids=False,  # one row per class, not per sample
    asset_kinds=lambda spec: {"pandas", "duckdb"},
    asset_metadata=_metadata,
)
