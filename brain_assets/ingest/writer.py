"""The one place importers write to the store, after every row has been validated."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dagster_brain.ingest.classes import (
    DECLARED,
    INFERRED,
    STORED,
    check_declared,
    infer_classes,
    natural_order,
)
from dagster_brain.ingest.errors import FieldSummary, IngestError, IngestReport
from dagster_brain.store import Store

_LOG = logging.getLogger("dagster_brain")


@dataclass
class FieldRows:
    """Label rows of one field, ready for ``Store.write_samples``; ``origin`` says where the
    class order came from, ``box_format`` how the source wrote its boxes."""

    kind: str
    classes: list[str] | None
    rows: list[dict] = field(default_factory=list)
    origin: str = DECLARED
    box_format: str | None = None

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=Store.LABEL_COLUMNS)

    def summary(self) -> FieldSummary:
        """Label count, per-class counts (in class order) and logits shape."""
        counts = Counter(r["label"] for r in self.rows)
        order = list(self.classes or []) + sorted(set(counts) - set(self.classes or []))
        lengths = {len(r["logits"]) for r in self.rows if r.get("logits") is not None}
        return FieldSummary(
            kind=self.kind,
            classes=self.classes,
            classes_from=self.origin,
            labels=len(self.rows),
            per_class={c: counts.get(c, 0) for c in order},
            box_format=self.box_format,
            with_logits=sum(r.get("logits") is not None for r in self.rows),
            logits_length=max(lengths) if lengths else None,
        )


@dataclass
class EmbeddingRows:
    """Vectors of one embeddings key, aligned with sample ids."""

    source: str
    sample_ids: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)


def existing_sample_ids(store: Store, dataset: str) -> set[str]:
    """Sample ids already in the store (empty for a dataset that does not exist yet)."""
    if dataset not in store.list_datasets():
        return set()
    return set(store.sample_ids(dataset))


def stored_field(store: Store, dataset: str, fld: str) -> tuple[str, list[str] | None] | None:
    """(kind, classes) of an existing label field, or ``None``."""
    if dataset not in store.list_datasets():
        return None
    fields = store.label_fields(dataset)
    row = fields[fields["field"] == fld]
    if row.empty:
        return None
    classes = row["classes"].iloc[0]
    return row["kind"].iloc[0], (list(classes) if classes is not None else None)


def has_logits(store: Store, dataset: str, fld: str) -> bool:
    """Whether any stored label of the field carries logits."""
    n = store.query(
        "SELECT count(*) AS n FROM labels WHERE dataset = ? AND field = ? AND logits IS NOT NULL",
        [dataset, fld],
    )["n"].iloc[0]
    return bool(n > 0)


def resolve_classes(
    store: Store,
    dataset: str,
    fld: str,
    kind: str,
    given: Sequence[str] | None,
    seen: Iterable[str],
    uses_logits: bool,
    file: str,
    origin: str = DECLARED,
) -> tuple[list[str], str]:
    """The class list of a field and where it came from (``origin`` names a given list).

    A given list is checked (not empty, no repeats) and used as is; it may not reorder the
    classes of a field that already holds logits. Without one, the field's stored classes are
    kept when the labels fit; labels outside them extend the list, refused where logits index
    it. A new field without a given list takes the labels seen, in natural order
    (:func:`~dagster_brain.ingest.classes.infer_classes`: refused for logits unless safe).
    """
    seen = set(seen)
    old = stored_field(store, dataset, fld)
    if old is not None and old[0] != kind:
        raise IngestError(
            f"label field {fld!r} of {dataset!r} holds {old[0]}, not {kind}", file=file
        )
    old_classes = (old[1] or None) if old is not None else None
    has_old_logits = old_classes is not None and has_logits(store, dataset, fld)
    if given is not None:
        classes = check_declared(given, fld, file, origin)
        if has_old_logits and classes != old_classes:
            raise IngestError(
                f"field {fld!r} of {dataset!r} holds logits over classes {old_classes}; the "
                f"classes given ({origin}) are {classes}: ingest into a new field, or delete "
                "the field first",
                file=file,
            )
        return classes, origin
    if old_classes is None:
        return infer_classes(seen, fld, file, uses_logits), INFERRED
    if seen <= set(old_classes):
        if uses_logits and not has_old_logits:
            try:  # the stored order was never read against logits: safe only if unambiguous
                infer_classes(old_classes, fld, file, True)
            except IngestError as err:
                raise IngestError(
                    f"field {fld!r} of {dataset!r} holds classes {old_classes} written without "
                    f"logits; {err.message}",
                    file=file,
                ) from None
        return old_classes, STORED
    new = natural_order(seen - set(old_classes))
    if uses_logits or has_old_logits:
        raise IngestError(
            f"labels {new} are not among the classes of field {fld!r} ({old_classes}) and logits "
            "are indexed by those classes; pass the full classes list",
            file=file,
        )
    infer_classes(set(old_classes) | seen, fld, file, False)  # refuses ints mixed with words
    return old_classes + new, STORED


def describe(report: IngestReport, labels: dict[str, FieldRows]) -> None:
    """Record in the report what was understood of each label field."""
    report.fields.update({f: r.summary() for f, r in labels.items()})


def commit(
    store: Store,
    dataset: str,
    samples: list[dict],
    labels: dict[str, FieldRows],
    embeddings: dict[str, EmbeddingRows],
    report: IngestReport,
    file: str | None = None,
    dry_run: bool = False,
) -> IngestReport:
    """Write validated samples + labels (one transaction), then merge each embeddings key.
    When this ingest creates the dataset and a write fails, the dataset is removed again.

    Vectors already stored under a key stay for samples this ingest does not cover; a key whose
    stored dimension differs is refused before anything is written. ``dry_run`` checks and
    describes everything and writes nothing.
    """
    describe(report, labels)
    report.dry_run = dry_run
    if not samples:
        report.notes.append("nothing to write: no valid samples")
        return report
    merged = {key: _merge_embeddings(store, dataset, key, e, file) for key, e in embeddings.items()}
    before = existing_sample_ids(store, dataset)
    if dry_run:
        report.sample_ids = [s["sample_id"] for s in samples]
        report.added = sum(s["sample_id"] not in before for s in samples)
        report.updated = len(samples) - report.added
        return report
    frame = pd.DataFrame(samples, columns=Store.SAMPLE_COLUMNS)
    new_dataset = dataset not in store.list_datasets()
    try:
        store.write_samples(
            dataset,
            frame,
            labels={f: (r.kind, r.classes, r.frame()) for f, r in labels.items()},
        )
        for key, (ids, vectors, source) in merged.items():
            store.write_embeddings(dataset, key, ids, vectors, source=source, model=None)
    except BaseException as err:
        if new_dataset:  # a failed first ingest leaves no dataset behind, empty or partial
            _remove_new_dataset(store, dataset, err)
        raise
    report.sample_ids = [s["sample_id"] for s in samples]
    report.added = sum(s["sample_id"] not in before for s in samples)
    report.updated = len(samples) - report.added
    report.label_fields.update({f: len(r.rows) for f, r in labels.items()})
    report.embeddings_keys.update({k: len(e.sample_ids) for k, e in embeddings.items()})
    return report


def _remove_new_dataset(store: Store, dataset: str, err: BaseException) -> None:
    """Delete ``dataset``, created by an ingest that failed with ``err``; a failure to do so
    (the disk still full) is logged and noted on ``err``, which stays the error raised."""
    try:
        if dataset in store.list_datasets():
            store.delete_dataset(dataset)
    except Exception as cleanup:
        note = (
            f"dataset {dataset!r} was created by this failed ingest and could not be removed "
            f"({cleanup}); it may be empty or partial: ingest again once the cause is fixed"
        )
        _LOG.warning("%s", note)
        err.add_note(note)


def _merge_embeddings(
    store: Store, dataset: str, key: str, new: EmbeddingRows, file: str | None
) -> tuple[list[str], np.ndarray, str]:
    vectors = np.vstack(new.vectors).astype(np.float32) if new.vectors else np.zeros((0, 0))
    if dataset not in store.list_datasets():
        return new.sample_ids, vectors, new.source
    sets = store.embedding_sets(dataset)
    if key not in set(sets["embeddings_key"]):
        return new.sample_ids, vectors, new.source
    old = store.read_embeddings(dataset, key)
    if old.patches_field is not None:
        raise IngestError(f"embeddings key {key!r} holds patch embeddings", file=file)
    if old.dim != vectors.shape[1]:
        raise IngestError(
            f"embeddings key {key!r} holds {old.dim}-d vectors; these are {vectors.shape[1]}-d",
            file=file,
        )
    replaced = set(new.sample_ids)
    keep = [i for i, s in enumerate(old.sample_ids) if s not in replaced]
    ids = [old.sample_ids[i] for i in keep] + new.sample_ids
    return ids, np.vstack([old.vectors[keep], vectors]), new.source
