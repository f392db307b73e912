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
        return f"{self.where}: {self.message}" if self.where else self.message


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
class IngestReport:
    """What one ingest call wrote (counts per label field and embeddings key) and skipped."""

    dataset: str
    added: int = 0
    updated: int = 0
    skipped: list[SkippedRow] = field(default_factory=list)
    label_fields: dict[str, int] = field(default_factory=dict)
    embeddings_keys: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)  # the samples written

    def summary(self, max_skipped: int = 10) -> str:
        """A few lines of text for the CLI and logs."""
        lines = [
            f"dataset {self.dataset!r}: {self.added} samples added, {self.updated} updated, "
            f"{len(self.skipped)} skipped"
        ]
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
