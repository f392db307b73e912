"""What the viewer's pages show, read from the store: a visualization run's points, the fields
they can be coloured by (label fields and score fields of the dataset) and their values."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from dagster_brain.names import check_name
from dagster_brain.store import Store, StoreError


class ViewerError(ValueError):
    """A request the viewer refuses; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ColourField:
    """One colour choice: ``label:<field>`` (categories) or ``score:<brain_key>`` (numbers)."""

    id: str
    kind: str  # "label" or "score"
    name: str  # the label field or the brain key
    column: str | None = None  # the score column of a score field

    def as_json(self) -> dict[str, Any]:
        title = self.name if self.kind == "label" else f"{self.name} ({self.column})"
        return {"id": self.id, "kind": self.kind, "name": self.name, "title": title}


def visualization_runs(store: Store) -> list[tuple[str, str]]:
    """(dataset, brain key) of every visualization run in the store."""
    out = []
    for dataset in store.list_datasets():
        runs = store.list_runs(dataset, kind="visualization")
        out.extend((dataset, key) for key in runs["brain_key"])
    return out


def require_plot(store: Store, dataset: str, brain_key: str) -> None:
    """Refuse an unknown dataset, brain key, or a run that is not a visualization."""
    check_name(dataset, "dataset")
    check_name(brain_key, "brain key")
    if dataset not in store.list_datasets():
        known = ", ".join(store.list_datasets()) or "none"
        raise ViewerError(f"no dataset {dataset!r} (datasets: {known})", 404)
    record = store.get_run(dataset, brain_key, missing_ok=True)
    if record is None:
        keys = ", ".join(store.list_runs(dataset, kind="visualization")["brain_key"]) or "none"
        raise ViewerError(
            f"dataset {dataset!r} has no brain run {brain_key!r} (visualization runs: {keys})",
            404,
        )
    if record.kind != "visualization":
        raise ViewerError(
            f"brain run {brain_key!r} of dataset {dataset!r} is a {record.kind} run, "
            "not a visualization",
            400,
        )


def points(store: Store, dataset: str, brain_key: str) -> pd.DataFrame:
    """A visualization run's points: ``sample_id``, optional ``label_id``, ``x``, ``y`` (and
    ``z``), in the run's order."""
    require_plot(store, dataset, brain_key)
    return store.load_results(dataset, brain_key)


def plot_data(store: Store, dataset: str, brain_key: str) -> dict[str, Any]:
    """The JSON a plot page loads: point ids, sample ids, coordinates, colour fields."""
    pts = points(store, dataset, brain_key)
    record = store.get_run(dataset, brain_key)
    ids = pts["label_id"] if "label_id" in pts else pts["sample_id"]
    dims = [a for a in ("x", "y", "z") if a in pts]
    return {
        "dataset": dataset,
        "brain_key": brain_key,
        "method": record.method,
        "ids": ids.astype(str).tolist(),
        "sample_ids": pts["sample_id"].astype(str).tolist(),
        "x": pts["x"].astype(float).tolist(),
        "y": pts["y"].astype(float).tolist(),
        "dims": len(dims),
        "default_field": default_field(store, dataset, brain_key),
        "fields": [f.as_json() for f in colour_fields(store, dataset)],
    }


def default_field(store: Store, dataset: str, brain_key: str) -> str | None:
    """The colour field a plot opens with: the run's ``label_field``, if it still exists."""
    field = store.get_run(dataset, brain_key).config.get("label_field")
    known = set(store.label_fields(dataset)["field"])
    return f"label:{field}" if field in known else None


def colour_fields(store: Store, dataset: str) -> list[ColourField]:
    """The dataset's label fields, then its brain runs that have a score column."""
    from dagster_brain.methods import METHODS

    out = [ColourField(f"label:{f}", "label", f) for f in store.label_fields(dataset)["field"]]
    for key, kind in store.list_runs(dataset)[["brain_key", "kind"]].itertuples(index=False):
        method = METHODS.get(kind)
        if method is not None and method.score is not None:
            out.append(ColourField(f"score:{key}", "score", key, method.score.column))
    return out


def colour_values(store: Store, dataset: str, brain_key: str, field: str) -> dict[str, Any]:
    """One colour field's value for each point of the plot (None where it has none)."""
    pts = points(store, dataset, brain_key)
    fields = {f.id: f for f in colour_fields(store, dataset)}
    if field not in fields:
        known = ", ".join(fields) or "none"
        raise ViewerError(
            f"dataset {dataset!r} has no colour field {field!r} (fields: {known})", 404
        )
    f = fields[field]
    if f.kind == "label":
        values = _label_values(store, dataset, f.name, pts)
    else:
        values = _score_values(store, dataset, f, pts)
    return {"field": f.id, "kind": f.kind, "title": f.as_json()["title"], "values": values}


def _per_point(pts: pd.DataFrame, frame: pd.DataFrame, column: str) -> list[Any]:
    """``frame[column]`` for each point: by label id where both have one, else by sample id
    (the first row of each sample)."""
    if "label_id" in pts and "label_id" in frame:
        by = frame.drop_duplicates("label_id").set_index("label_id")[column]
        keys = pts["label_id"]
    else:
        by = frame.drop_duplicates("sample_id").set_index("sample_id")[column]
        keys = pts["sample_id"]
    return [_json_value(v) for v in keys.map(by)]


def _json_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def _label_values(store: Store, dataset: str, fld: str, pts: pd.DataFrame) -> list[Any]:
    labels = store.labels(dataset, fld)
    values = _per_point(pts, labels, "label")
    return [None if v is None else str(v) for v in values]


def _score_values(store: Store, dataset: str, f: ColourField, pts: pd.DataFrame) -> list[Any]:
    results = store.load_results(dataset, f.name)
    if f.column not in results:
        raise StoreError(f"brain run {f.name!r} of dataset {dataset!r} has no {f.column!r} column")
    if "label_id" not in pts and "label_id" in results:
        # one point per sample, scores per label: colour a sample by its highest score
        results = results.groupby("sample_id", as_index=False)[f.column].max()
    values = _per_point(pts, results, f.column)
    return [None if v is None else float(v) for v in values]


def sample_filepath(store: Store, dataset: str, sample_id: str) -> str:
    """The image file of one sample; a clear error naming the dataset if it has no such id."""
    rows = store.samples(dataset, [sample_id])
    if rows.empty:
        raise ViewerError(f"dataset {dataset!r} has no sample {sample_id!r}", 404)
    return str(rows["filepath"].iloc[0])
