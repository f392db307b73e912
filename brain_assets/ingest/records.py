"""Manifest tables (CSV, Parquet, JSON Lines) as records, and parsers for their cell values."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dagster_brain.ingest.errors import IngestError

TABLE_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}


def read_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a manifest as dicts, plus its column names; row i+1 is records[i]."""
    path = Path(path)
    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise IngestError(
            f"unknown manifest format {path.suffix!r} (use {', '.join(sorted(TABLE_FORMATS))})",
            file=path.name,
        )
    if not path.is_file():
        raise IngestError(f"manifest not found: {path}", file=path.name)
    try:
        if fmt == "csv":
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                records = list(reader)
                columns = list(reader.fieldnames or [])
            return records, columns
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return table.to_pylist(), list(table.column_names)
    except (OSError, ValueError, csv.Error) as err:  # pyarrow's errors subclass these
        raise IngestError(f"cannot read manifest: {err}", file=path.name) from None
    return _read_json_records(path, fmt)


def _read_json_records(path: Path, fmt: str) -> tuple[list[dict[str, Any]], list[str]]:
    text = path.read_text(encoding="utf-8")
    if fmt == "json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise IngestError(f"invalid JSON: {err}", file=path.name) from None
        if not isinstance(records, list):
            raise IngestError("expected a JSON list of records", file=path.name)
    else:
        records = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                # JSON Lines rows are lines, so the row number is the line number here
                raise IngestError(f"invalid JSON: {err}", file=path.name, row=i) from None
    columns: dict[str, None] = {}
    for i, rec in enumerate(records, start=1):
        if not isinstance(rec, dict):
            raise IngestError("record is not a JSON object", file=path.name, row=i)
        columns.update(dict.fromkeys(rec))
    return records, list(columns)


def require_columns(columns: Sequence[str], wanted: dict[str, str | None], file: str) -> None:
    """Fail once, naming every requested column the manifest lacks."""
    missing = [f"{col!r} ({what})" for what, col in wanted.items() if col and col not in columns]
    if missing:
        raise IngestError(
            f"no column {', '.join(missing)} (columns: {', '.join(columns)})", file=file
        )


def is_missing(value: Any) -> bool:
    """Empty cell: None, blank string or a float NaN."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, float):
        return math.isnan(value)
    return False


def as_text(value: Any) -> str | None:
    """A cell as a stripped string (ids, labels, paths), ``None`` when empty."""
    if is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # ids that a reader turned into floats
    return str(value).strip()


def as_float(value: Any, what: str) -> float:
    """A cell as a float, NaN when empty; ``ValueError`` naming ``what`` otherwise."""
    if is_missing(value):
        return math.nan
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a number") from None
    return out


def as_vector(value: Any, what: str) -> np.ndarray | None:
    """A list cell (a list, an array, or a JSON list in text) as float64, ``None`` when empty.

    Raises ``ValueError`` for text that is not a JSON list, nested or non-numeric values and
    NaN or infinite entries.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{what} is not a JSON list: {value[:40]!r}") from None
    if not isinstance(value, list | tuple | np.ndarray):
        raise ValueError(f"{what} is not a list of numbers: {value!r}")
    try:
        vec = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} holds values that are not numbers") from None
    if vec.ndim != 1:
        raise ValueError(f"{what} is not a flat list of numbers (shape {vec.shape})")
    bad = np.flatnonzero(~np.isfinite(vec))
    if bad.size:
        raise ValueError(f"{what} has a non-finite value ({vec[bad[0]]}) at position {bad[0]}")
    return vec


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits (log-probabilities come back as the probabilities)."""
    z = np.exp(logits - logits.max())
    return z / z.sum()
