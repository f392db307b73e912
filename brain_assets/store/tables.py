"""SQL names of the store's per-run and per-view tables, and quoted column lists.

Every identifier pasted into SQL text goes through :func:`quote` (names are validated first,
see :mod:`dagster_brain.names`); values never do: they are passed as parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

from dagster_brain.names import quote

__all__ = [
    "column_list",
    "extra_table_name",
    "qualified",
    "quote",
    "results_table_name",
    "view_table_name",
]


def qualified(schema: str, name: str) -> str:
    """``schema."name"``: a table in one of the store's own schemas (``results``, ``views``,
    written in the code, so left bare as before)."""
    return f"{schema}.{quote(name)}"


def column_list(columns: Iterable[str]) -> str:
    """Quoted, comma-separated column names for a SELECT or INSERT list."""
    return ", ".join(quote(c) for c in columns)


def results_table_name(dataset: str, brain_key: str) -> str:
    """Qualified, quoted name of a run's results table."""
    return qualified("results", f"{dataset}__{brain_key}")


def extra_table_name(dataset: str, brain_key: str, name: str) -> str:
    """Qualified, quoted name of a run's further table (names never contain ``__``)."""
    return qualified("results", f"{dataset}__{brain_key}__{name}")


def view_table_name(dataset: str, name: str) -> str:
    """Qualified, quoted name of a saved view's table."""
    return qualified("views", f"{dataset}__{name}")
