"""Ingest errors that name the file, row and sample; the report an ingest returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class IngestError(ValueError):
    """Bad input, located: ``manifest.csv row 12 (sample 'cat_003'): <message>``.

    ``file`` is the name shown to the user (a manifest's file name, or an image path relative to
    the folder being ingested), ``row`` the 1-based data row / record index (``None`` for
    file-level problems) and ``row_kind`` the noun for it (``row``, ``annotation``, ``image``).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        sample_id: str | None = None,
        row_kind: str = "row",
    ):
        self.message = message
        self.file = file
        self.row = row
        self.sample_id = sample_id
        self.row_kind = row_kind
        super().__init__(message)

    @property
    def where(self) -> str:
        """``file row N (sample 'x')``, leaving out what is unknown."""
        parts = [self.file] if self.file else []
        if self.row is not None:
            parts.append(f"{self.row_kind} {self.row}")
        if self.sample_id is not None:
            parts.append(f"(sample {self.sample_id!r})")
        return " ".join(parts)

    def __str__(self) -> str:
        where = self.where
        # a message that starts or ends with its place ("not a folder: <path>") names it already
        if not where or self.message.startswith(where) or self.message.endswith(where):
            return self.message
        return f"{where}: {self.message}"


class SkippedRow(NamedTuple):
    """A bad input that ``skip_bad=True`` left out: (file, row, sample_id, reason, row_kind)."""

    file: str | None
    row: int | None
    sample_id: str | None
    reason: str
    row_kind: str = "row"

    def __str__(self) -> str:
        err = IngestError(
            self.reason,
            file=self.file,
            row=self.row,
            sample_id=self.sample_id,
            row_kind=self.row_kind,
        )
        return str(err)


@dataclass
class BadRowPolicy:
    """Raise on the first bad row, or (``skip_bad``) record it and go on."""

    skip_bad: bool = False
    skipped: list[SkippedRow] = field(default_factory=list)

    def reject(self, err: IngestError) -> None:
        """Raise ``err``, or remember it as skipped."""
        if not self.skip_bad:
            raise err
        self.skipped.append(SkippedRow(err.file, err.row, err.sample_id, err.message, err.row_kind))


@dataclass
class FieldSummary:
    """What an ingest understood of one label field: its classes (in order, and where the
    order came from), box format, logits and counts per class."""

    kind: str
    classes: list[str] | None
    classes_from: str
    labels: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    box_format: str | None = None
    with_logits: int = 0
    logits_length: int | None = None

    def lines(self, name: str) -> list[str]:
        """Indented lines for :meth:`IngestReport.summary`."""
        classes = ", ".join(self.classes or [])
        out = [
            f"  field {name!r} ({self.kind}): {self.labels} labels",
            f"    classes ({len(self.classes or [])}, {self.classes_from}, in order): {classes}",
        ]
        if self.box_format:
            out.append(f"    boxes: {self.box_format} -> relative [x, y, w, h]")
        if self.with_logits:
            out.append(f"    logits: {self.with_logits} x {self.logits_length} (classes order)")
        counts = ", ".join(f"{c} {n}" for c, n in self.per_class.items())
        out.append(f"    per class: {counts}")
        return out

    def as_dict(self) -> dict:
        """JSON-ready form (Dagster metadata)."""
        return {
            "kind": self.kind,
            "classes": self.classes,
            "classes_from": self.classes_from,
            "labels": self.labels,
            "per_class": self.per_class,
            "box_format": self.box_format,
            "logits": [self.with_logits, self.logits_length] if self.with_logits else None,
        }


@dataclass
class IngestReport:
    """What one ingest call wrote (counts per label field and embeddings key) and skipped.

    ``fields`` describes each label field as understood; with ``dry_run`` nothing was
    written and ``added``/``updated`` count what would have been.
    """

    dataset: str
    added: int = 0
    updated: int = 0
    skipped: list[SkippedRow] = field(default_factory=list)
    label_fields: dict[str, int] = field(default_factory=dict)
    embeddings_keys: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)  # the samples written
    fields: dict[str, FieldSummary] = field(default_factory=dict)
    dry_run: bool = False

    def understood(self) -> dict:
        """Samples, fields (classes in order and their origin, boxes, logits) and skips, as
        plain data for Dagster metadata."""
        return {
            "samples": len(self.sample_ids),
            "fields": {k: v.as_dict() for k, v in self.fields.items()},
            "skipped": len(self.skipped),
        }

    def summary(self, max_skipped: int = 10) -> str:
        """A few lines of text for the CLI and logs."""
        verb = "would be " if self.dry_run else ""
        lines = [
            f"dataset {self.dataset!r}: {self.added} samples {verb}added, {self.updated} "
            f"{verb}updated, {len(self.skipped)} skipped"
        ]
        if self.dry_run:
            lines[0] = f"dry run, nothing written: {lines[0]}"
        for name, fs in self.fields.items():
            lines.extend(fs.lines(name))
        if self.label_fields:
            fields = ", ".join(f"{k} ({n})" for k, n in self.label_fields.items())
            lines.append(f"  labels: {fields}")
        if self.embeddings_keys:
            keys = ", ".join(f"{k} ({n})" for k, n in self.embeddings_keys.items())
            lines.append(f"  embeddings: {keys}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        lines.extend(f"  skipped {s}" for s in self.skipped[:max_skipped])
        if len(self.skipped) > max_skipped:
            lines.append(f"  ... and {len(self.skipped) - max_skipped} more skipped")
        return "\n".join(lines)
