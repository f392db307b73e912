"""A label field's class list: declared by the user, checked, or inferred only where safe.

Logits are read against the class list position by position, so its order is never guessed:
it comes from a declared list (``classes:`` in the source YAML, ``--classes``, a manifest's
classes metadata, COCO ``categories`` in their listed order). Without one, labels may set the
order only when nothing reads it (no logits), or when they are integers whose numeric and
lexical orders agree (``0..9``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dagster_brain.ingest.errors import IngestError

_INT = re.compile(r"^[+-]?\d+$")

# where a field's class list came from (shown in summaries and the dry run)
DECLARED = "declared"
CATEGORIES = "categories"
METADATA = "manifest metadata"
STORED = "stored"
INFERRED = "inferred"


def is_int_like(label: str) -> bool:
    """Whether a label is an integer written as text (``'7'``, ``'-1'``)."""
    return bool(_INT.match(label))


def raw_kind(value: Any) -> str | None:
    """``'int'`` for an integer cell (an integral float too), ``'str'`` for text, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "int"
    if isinstance(value, str) and value.strip():
        return "str"
    return None


def natural_order(labels: Iterable[str]) -> list[str]:
    """Numeric order when every label is an integer, lexical order otherwise."""
    labels = set(labels)
    if labels and all(is_int_like(s) for s in labels):
        return sorted(labels, key=lambda s: (int(s), s))
    return sorted(labels)


def check_declared(classes: Sequence[Any], fld: str, file: str, origin: str) -> list[str]:
    """A declared class list as strings; refuses an empty list, blanks and repeated names."""
    if not isinstance(classes, list | tuple):
        raise IngestError(
            f"classes of field {fld!r} ({origin}) must be a list of names, not {classes!r}",
            file=file,
        )
    out = [str(c).strip() if not isinstance(c, str) else c for c in classes]
    if not out:
        raise IngestError(f"classes of field {fld!r} ({origin}) is an empty list", file=file)
    blank = [i for i, c in enumerate(out) if not c.strip()]
    if blank:
        raise IngestError(
            f"classes of field {fld!r} ({origin}) has an empty name at position {blank[0]}",
            file=file,
        )
    repeated = sorted({c for c in out if out.count(c) > 1})
    if repeated:
        raise IngestError(
            f"classes of field {fld!r} ({origin}) repeat {repeated}: {out}", file=file
        )
    return out


def check_label_kinds(values: Iterable[tuple[str, str | None]], fld: str, file: str) -> None:
    """Refuse a field whose cells mix integers and text (``3`` and ``'3'``, or ints and words).

    ``values`` are (label text, :func:`raw_kind` of the cell) pairs.
    """
    examples: dict[str, str] = {}
    for text, kind in values:
        if kind is not None:
            examples.setdefault(kind, text)
    if len(examples) == 2:
        raise IngestError(
            f"labels of field {fld!r} mix integers and text (e.g. {int(examples['int'])} and "
            f"{examples['str']!r}); write every label the same way and declare the classes "
            "(classes: [...])",
            file=file,
        )


def infer_classes(labels: Iterable[str], fld: str, file: str, uses_logits: bool) -> list[str]:
    """The natural order of the labels seen, where that order is safe to use.

    Refuses labels that mix integer-like and other text, and, when logits are read against
    the list, any order but integers whose numeric and lexical orders agree.
    """
    labels = set(labels)
    ints = sorted(s for s in labels if is_int_like(s))
    words = sorted(labels - set(ints))
    if ints and words:
        raise IngestError(
            f"labels of field {fld!r} mix integers and words (e.g. {ints[0]!r} and "
            f"{words[0]!r}); declare the classes in order (classes: [...])",
            file=file,
        )
    order = natural_order(labels)
    if not uses_logits:
        return order
    if not labels:
        raise IngestError(
            f"logits of field {fld!r} need classes: declare them in logits order "
            "(classes: [...], --classes); there are no labels to take them from",
            file=file,
        )
    lexical = sorted(labels)
    if ints and order == lexical:
        return order
    numeric = "numeric " + ", ".join(order) if ints else "none (labels are not integers)"
    raise IngestError(
        f"logits of field {fld!r} are read against its class list, and the order is not "
        f"declared; labels seen give orders that may differ from the model's: lexical "
        f"[{', '.join(lexical)}] vs {numeric}. Declare the classes in the model's logits "
        "order: `classes: [...]` in the source YAML, `--classes a,b,...` on the command line, "
        "or the manifest's classes metadata",
        file=file,
    )


def manifest_classes(path: Path) -> list[str] | None:
    """Classes a manifest declares: its ``<stem>.classes.json`` sidecar (a JSON list) or, for
    Parquet, the schema metadata key ``classes`` (a JSON list). Both present must agree."""
    found: list[tuple[str, Any]] = []
    sidecar = path.with_name(f"{path.stem}.classes.json")
    if sidecar.is_file():
        try:
            found.append((sidecar.name, json.loads(sidecar.read_text(encoding="utf-8"))))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise IngestError(f"invalid JSON: {err}", file=sidecar.name) from None
    if path.suffix.lower() in (".parquet", ".pq") and path.is_file():
        import pyarrow.parquet as pq

        try:
            meta = pq.read_schema(path).metadata or {}
        except (OSError, ValueError):
            meta = {}  # the reader names the unreadable file
        if b"classes" in meta:
            try:
                found.append((f"{path.name} metadata", json.loads(meta[b"classes"])))
            except json.JSONDecodeError as err:
                raise IngestError(f"classes metadata is not JSON: {err}", file=path.name) from None
    lists = [check_declared(v, "*", name, "manifest metadata") for name, v in found]
    if len(lists) == 2 and lists[0] != lists[1]:
        raise IngestError(
            f"{found[0][0]} lists classes {lists[0]} but {found[1][0]} lists {lists[1]}",
            file=path.name,
        )
    return lists[0] if lists else None


def merge_declared(
    given: Sequence[str] | None, from_file: list[str] | None, file: str
) -> tuple[list[str] | None, str]:
    """The declared list and its origin; a ``classes`` argument must match the file's own."""
    if given is not None and from_file is not None and list(given) != from_file:
        raise IngestError(
            f"classes {list(given)} disagree with the classes the manifest declares {from_file}",
            file=file,
        )
    if given is not None:
        return list(given), DECLARED
    if from_file is not None:
        return from_file, METADATA
    return None, INFERRED
