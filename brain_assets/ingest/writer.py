"""The one place importers write to the store, after every row has been validated."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dagster_brain.ingest.errors import IngestError, IngestReport
from dagster_brain.store import Store


@dataclass
class FieldRows:
    """Label rows of one field, ready for ``Store.write_samples``."""

    kind: str
    classes: list[str] | None
    rows: list[dict] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=Store.LABEL_COLUMNS)


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


def resolve_classes(
    store: Store,
    dataset: str,
    fld: str,
    kind: str,
    given: list[str] | None,
    seen: Iterable[str],
    uses_logits: bool,
    file: str,
) -> list[str]:
    """The classes list of a field: given, else the stored one, else the sorted labels seen.

    A field that already holds classes keeps them when the new labels fit; when they do not,
    the classes grow to the sorted union, which is refused where logits index the classes.
    """
    seen = set(seen)
    old = stored_field(store, dataset, fld)
    if old is not None and old[0] != kind:
        raise IngestError(
            f"label field {fld!r} of {dataset!r} holds {old[0]}, not {kind}", file=file
        )
    if given is not None:
        if len(set(given)) != len(given):
            raise IngestError(f"classes of field {fld!r} repeat a name: {given}", file=file)
        return list(given)
    old_classes = old[1] if old is not None else None
    if not old_classes:
        if uses_logits and not seen:
            raise IngestError(
                f"logits of field {fld!r} need classes: pass them (no labels to infer them from)",
                file=file,
            )
        return sorted(seen)
    if seen <= set(old_classes):
        return old_classes
    n_logits = store.query(
        "SELECT count(*) AS n FROM labels WHERE dataset = ? AND field = ? AND logits IS NOT NULL",
        [dataset, fld],
    )["n"].iloc[0]
    has_old_logits = n_logits > 0
    if uses_logits or has_old_logits:
        new = sorted(seen - set(old_classes))
        raise IngestError(
            f"labels {new} are not among the classes of field {fld!r} ({old_classes}) and logits "
            "are indexed by those classes; pass the full classes list",
            file=file,
        )
    return sorted(set(old_classes) | seen)


def commit(
    store: Store,
    dataset: str,
    samples: list[dict],
    labels: dict[str, FieldRows],
    embeddings: dict[str, EmbeddingRows],
    report: IngestReport,
    file: str | None = None,
) -> IngestReport:
    """Write validated samples + labels (one transaction), then merge each embeddings key.

    Vectors already stored under a key stay for samples this ingest does not cover; a key whose
    stored dimension differs is refused before anything is written.
    """
    if not samples:
        report.notes.append("nothing to write: no valid samples")
        return report
    merged = {key: _merge_embeddings(store, dataset, key, e, file) for key, e in embeddings.items()}
    before = existing_sample_ids(store, dataset)
    frame = pd.DataFrame(samples, columns=Store.SAMPLE_COLUMNS)
    store.write_samples(
        dataset,
        frame,
        labels={f: (r.kind, r.classes, r.frame()) for f, r in labels.items()},
    )
    for key, (ids, vectors, source) in merged.items():
        store.write_embeddings(dataset, key, ids, vectors, source=source, model=None)
    report.sample_ids = [s["sample_id"] for s in samples]
    report.added = sum(s["sample_id"] not in before for s in samples)
    report.updated = len(samples) - report.added
    report.label_fields.update({f: len(r.rows) for f, r in labels.items()})
    report.embeddings_keys.update({k: len(e.sample_ids) for k, e in embeddings.items()})
    return report


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
