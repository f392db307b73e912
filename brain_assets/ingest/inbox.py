"""Batches in an inbox folder: what is there, whether it is complete, and ingesting one.

A batch is a sub-folder of images (``image_folder`` layout) or a manifest file (``manifest``
layout) directly inside the inbox, or a predictions table in its ``predictions`` sub-folder
(batch ``predictions-<stem>``: predictions on samples already there). Its name is the
dynamic partition key; its fingerprint (names, sizes and modification times of its files)
tells a changed batch from a seen one.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster_brain.ingest.errors import IngestError, IngestReport
from dagster_brain.ingest.image_folder import find_images, ingest_image_folder
from dagster_brain.ingest.manifest import ingest_manifest
from dagster_brain.specs import DatasetSpec, InboxSource
from dagster_brain.store import Store

BATCH_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")  # no final newline
MANIFEST_SUFFIXES = (".csv", ".parquet", ".jsonl", ".ndjson")
READY_MARKER = "_SUCCESS"


@dataclass(frozen=True)
class Batch:
    """One batch found in the inbox."""

    name: str
    path: Path
    fingerprint: str
    newest_mtime: float
    marked_ready: bool

    def is_ready(self, settle_seconds: float, now: float | None = None) -> bool:
        """Complete: marked with ``_SUCCESS`` or unchanged for ``settle_seconds``."""
        now = time.time() if now is None else now
        return self.marked_ready or now - self.newest_mtime >= settle_seconds


@dataclass
class InboxListing:
    """The batches of an inbox, and the entries that cannot be batches (with why)."""

    batches: dict[str, Batch] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def _fingerprint(path: Path) -> tuple[str, float, bool]:
    digest = hashlib.sha256()
    newest = path.stat().st_mtime
    ready = False
    for f in _files(path):
        st = f.stat()
        rel = f.name if path.is_file() else f.relative_to(path).as_posix()
        ready = ready or rel == READY_MARKER
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        newest = max(newest, st.st_mtime)
    return digest.hexdigest()[:16], newest, ready


PREDICTIONS_PREFIX = "predictions-"


def _table(folder: Path, stem: str) -> Path | None:
    """The table ``<stem>.<csv|parquet|jsonl|ndjson>`` (any case), as the listing picks it."""
    return next((t for t in _tables(folder) if t.stem == stem), None)


def batch_path(source: InboxSource, root: Path, name: str) -> Path | None:
    """Where batch ``name`` lives in the inbox now, or ``None`` if it is gone."""
    if name.startswith(PREDICTIONS_PREFIX):
        return _table(root / source.predictions_dir, name[len(PREDICTIONS_PREFIX) :])
    if source.layout == "image_folder":
        p = root / name
        return p if p.is_dir() else None
    return _table(root, name)


def _tables(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [
        e
        for e in sorted(folder.iterdir())
        if e.is_file() and e.suffix.lower() in MANIFEST_SUFFIXES and not e.name.startswith(".")
    ]


def list_batches(source: InboxSource, root: Path) -> InboxListing:
    """Every batch in the inbox ``root`` (missing folder: none)."""
    listing = InboxListing()
    if not root.is_dir():
        return listing
    tables = set(_tables(root))
    entries = [
        (e, e.name if source.layout == "image_folder" else e.stem)
        for e in sorted(root.iterdir())
        if not e.name.startswith((".", "_"))
        and e.name != source.predictions_dir
        and (e.is_dir() if source.layout == "image_folder" else e in tables)
    ]
    entries += [(e, PREDICTIONS_PREFIX + e.stem) for e in _tables(root / source.predictions_dir)]
    for entry, name in entries:
        if entry.parent == root and name.startswith(PREDICTIONS_PREFIX):
            listing.rejected[entry.name] = (
                f"names starting with {PREDICTIONS_PREFIX!r} are kept for the tables in "
                f"{source.predictions_dir}/"
            )
            continue
        if not BATCH_NAME.fullmatch(name):
            listing.rejected[entry.name] = (
                "a batch name is letters, digits, '.', '_' or '-' (at most 100), starting with "
                "a letter or digit"
            )
            continue
        if name in listing.batches:
            listing.rejected[entry.name] = f"two manifests for batch {name!r}"
            continue
        fp, newest, ready = _fingerprint(entry)
        listing.batches[name] = Batch(name, entry, fp, newest, ready)
    return listing


@dataclass
class BatchReport:
    """What ingesting (or removing) one batch did."""

    batch: str
    fingerprint: str | None
    sample_ids: list[str]
    removed_ids: list[str]
    report: IngestReport | None

    @property
    def removed_batch(self) -> bool:
        """The batch is gone from the inbox: its samples were removed."""
        return self.fingerprint is None


def _id_prefix(batch: str) -> str:
    return f"{batch}/"


def ingest_batch(
    store: Store, spec: DatasetSpec, root: Path, batch: str, log: Any = None
) -> BatchReport:
    """Bring the store in line with batch ``batch`` of the inbox.

    New and changed images are upserted (sample ids ``<batch>/<path in the batch>`` for
    image folders; the manifest's ids otherwise), samples the batch no longer holds are
    removed with their labels and vectors, and a batch that left the inbox takes all its
    samples with it. A manifest id that already belongs to another batch is refused. A
    predictions batch writes its predictions field on existing samples and owns none (its
    removal leaves the predictions it wrote).
    """
    source = spec.source
    if not isinstance(source, InboxSource):
        raise TypeError(f"dataset {spec.name!r} has no inbox source")
    store.create_dataset(spec.name)
    before = store.batch_sample_ids(spec.name, batch)
    path = batch_path(source, root, batch)
    if path is None:
        store.delete_samples(spec.name, before)
        return BatchReport(batch, None, [], before, None)
    fingerprint, _, _ = _fingerprint(path)
    if batch.startswith(PREDICTIONS_PREFIX):
        report = _ingest_predictions(store, spec, path)
        return BatchReport(batch, fingerprint, [], [], report)
    if source.layout == "image_folder" and not find_images(path):
        store.delete_samples(spec.name, before)  # emptied: like a batch that left
        report = IngestReport(dataset=spec.name, notes=[f"batch {batch!r} holds no images"])
        return BatchReport(batch, fingerprint, [], before, report)
    if source.layout == "image_folder":
        report = ingest_image_folder(
            store,
            spec.name,
            path,
            label_field=source.label_field,
            batch=batch,
            id_prefix=_id_prefix(batch),
            classes=source.classes,
            skip_bad=source.skip_bad,
        )
    else:
        _refuse_foreign_ids(store, spec.name, batch, path, source, root)
        report = ingest_manifest(
            store,
            spec.name,
            path,
            id_column=source.id_column,
            filepath_column=source.filepath_column,
            label_column=source.label_column,
            prediction_column=source.prediction_column,
            confidence_column=source.confidence_column,
            logits_column=source.logits_column,
            classes=source.classes,
            label_field=source.label_field or "ground_truth",
            prediction_field=source.prediction_field,
            batch=batch,
            skip_bad=source.skip_bad,
        )
    now = set(store.batch_sample_ids(spec.name, batch))
    written = set(report.sample_ids)
    gone = sorted(set(before) - written)
    store.delete_samples(spec.name, gone)
    if log is not None:
        log.info(
            "batch %r: %s; %d samples it no longer holds removed",
            batch,
            report.summary(),
            len(gone),
        )
    return BatchReport(batch, fingerprint, sorted(now - set(gone)), gone, report)


def _ingest_predictions(store: Store, spec: DatasetSpec, path: Path) -> IngestReport:
    """Predictions on samples already in the dataset; rows for unknown samples are skipped
    and listed (or refused, naming them, when the source does not skip bad rows)."""
    from dagster_brain.ingest.predictions import ingest_predictions

    source = spec.source
    return ingest_predictions(
        store,
        spec.name,
        path,
        field=source.prediction_field,
        join_on=source.predictions_join_on,
        id_column=source.id_column,
        filepath_column=source.filepath_column,
        label_column=source.predictions_label_column,
        confidence_column=source.confidence_column,
        logits_column=source.logits_column,
        classes=source.classes,
        skip_bad=source.skip_bad,
    )


def _refuse_foreign_ids(
    store: Store, dataset: str, batch: str, path: Path, source: InboxSource, root: Path
) -> None:
    """Refuse ids that belong to another batch still in the inbox (ids of a batch that left
    it, e.g. a renamed manifest, move to this one)."""
    from dagster_brain.embeddings import read_table

    ids = read_table(path)
    if source.id_column not in ids:
        return  # the manifest importer names the missing column
    owners = store.sample_batches(dataset, ids[source.id_column].astype(str).tolist())
    foreign = {
        s: b
        for s, b in owners.items()
        if b != batch and (b is None or batch_path(source, root, b) is not None)
    }
    if foreign:
        sid, other = next(iter(sorted(foreign.items())))
        raise IngestError(
            f"{len(foreign)} sample ids of batch {batch!r} already belong to another batch, "
            f"e.g. {sid!r} (batch {other!r}); ids must be unique across batches",
            file=path.name,
            sample_id=sid,
        )
