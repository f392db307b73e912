"""Where a brain result's items can be seen: each sample's file, each patch's box, a label.

The runners put an :class:`ItemMedia` in their outcome's summary (``summary["media"]``); the
Dagster metadata (:mod:`dagster_brain.metadata`) asks it for the few items it shows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from dagster_brain.runs import RunOutcome
from dagster_brain.store import BrainRunRecord, Store

DEFAULT_LABEL_FIELD = "ground_truth"


@dataclass(frozen=True)
class ItemMedia:
    """Looks up the files (and boxes) of a run's items in its dataset when asked.

    ``patches_field``: the detections field of patch items (None: read from ``record``'s
    embeddings key or similarity index when the items have label ids). ``label_field``: the
    classification field whose label is shown for whole samples (None: ``ground_truth``, or the
    dataset's only classification field).
    """

    store: Store
    dataset: str
    record: BrainRunRecord | None = None
    patches_field: str | None = None
    label_field: str | None = None

    def frame(self, items: pd.DataFrame) -> pd.DataFrame:
        """``items`` (``sample_id``, optional ``label_id``) with ``filepath``, ``box`` and
        ``media_label`` columns (None where unknown), in the same row order."""
        out = items.reset_index(drop=True).copy()
        ids = [str(s) for s in out["sample_id"].dropna().unique()]
        paths = self.store.samples(self.dataset, ids=ids).set_index("sample_id")["filepath"]
        out["filepath"] = [paths.get(s) for s in out["sample_id"]]
        out["box"] = None
        out["media_label"] = None
        if "label_id" in out and out["label_id"].notna().any():
            fld = self.patches_field or self._patches_field()
            if fld:
                labels = self.store.labels(self.dataset, fld).set_index("label_id")
                out["box"] = [_box(labels, lid) for lid in out["label_id"]]
                out["media_label"] = [_cell(labels, lid, "label") for lid in out["label_id"]]
            return out
        fld = self._label_field()
        if fld:
            labels = self.store.labels(self.dataset, fld).drop_duplicates("sample_id")
            by_sample = labels.set_index("sample_id")["label"]
            out["media_label"] = [by_sample.get(s) for s in out["sample_id"]]
        return out

    def _patches_field(self) -> str | None:
        """The detections field behind the record's embeddings key or similarity index."""
        cfg = self.record.config if self.record is not None else {}
        if cfg.get("embeddings"):
            sets = self.store.embedding_sets(self.dataset)
            row = sets[sets["embeddings_key"] == cfg["embeddings"]]
            value = row["patches_field"].iloc[0] if len(row) else None
            return value if isinstance(value, str) else None
        if cfg.get("similarity"):
            sim = self.store.get_run(self.dataset, cfg["similarity"], missing_ok=True)
            index = (sim.config.get("index") or {}) if sim is not None else {}
            value = index.get("patches_field")
            return value if isinstance(value, str) else None
        return None

    def _label_field(self) -> str | None:
        fields = self.store.label_fields(self.dataset)
        classification = fields[fields["kind"] == "classification"]["field"].tolist()
        for name in (self.label_field, DEFAULT_LABEL_FIELD):
            if name and name in classification:
                return name
        return classification[0] if len(classification) == 1 else None


def _cell(frame: pd.DataFrame, key: Any, column: str) -> Any:
    if key is None or key not in frame.index:
        return None
    value = frame.loc[key, column]
    return value.iloc[0] if isinstance(value, pd.Series) else value


def _box(frame: pd.DataFrame, key: Any) -> tuple[float, ...] | None:
    value = _cell(frame, key, "box")
    return None if value is None else tuple(float(v) for v in value)


def with_media(run: Callable[..., RunOutcome]) -> Callable[..., RunOutcome]:
    """A runner whose outcome also carries the :class:`ItemMedia` of its items."""

    @functools.wraps(run)
    def wrapped(spec: Any, store: Store, **kwargs: Any) -> RunOutcome:
        out = run(spec, store, **kwargs)
        out.summary.setdefault("media", ItemMedia(store, spec.dataset, record=out.record))
        return out

    return wrapped
