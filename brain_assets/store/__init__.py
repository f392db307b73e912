"""The embedded store: one DuckDB file (the truth) plus Parquet copies, under one data directory.

Every table carries a ``dataset`` column, so one store holds many named datasets. Each brain
run's results live in their own table ``results."<dataset>__<brain_key>"``; names are validated
identifiers (see :mod:`dagster_brain.names`), so that name is unambiguous and safe to quote.
Values always travel as SQL parameters. Every write that belongs together happens in one
DuckDB transaction; Parquet copies are written to a temporary file first and renamed into
place only after the transaction commits.

Modules, bottom up: ``errors``, ``records`` (what comes back), ``hashing`` (data versions),
``vectors`` (Arrow <-> numpy), ``tables`` (quoted SQL names), ``schema`` (tables and numbered
migrations), ``connection`` (connections and :class:`Transaction`), ``mirror`` (Parquet
copies), ``core`` < ``samples`` < ``embeddings`` < ``runs`` < ``views`` (saved views) <
``facade`` (:class:`Store`), ``locks`` (one run per brain key).
"""

from __future__ import annotations

from dagster_brain.store.connection import Transaction
from dagster_brain.store.errors import StoreError
from dagster_brain.store.facade import Store
from dagster_brain.store.hashing import (
    embeddings_version,
    hash_strings,
    row_hashes,
    rows_digest,
)
from dagster_brain.store.locks import LOCK_HEARTBEAT_S, LOCK_STALE_S
from dagster_brain.store.records import BrainRunRecord, EmbeddingSet, utcnow
from dagster_brain.store.schema import SCHEMA_VERSION
from dagster_brain.store.tables import extra_table_name, results_table_name
from dagster_brain.store.vectors import arrow_to_vectors, vectors_to_arrow

__all__ = [
    "LOCK_HEARTBEAT_S",
    "LOCK_STALE_S",
    "SCHEMA_VERSION",
    "BrainRunRecord",
    "EmbeddingSet",
    "Store",
    "StoreError",
    "Transaction",
    "arrow_to_vectors",
    "embeddings_version",
    "extra_table_name",
    "hash_strings",
    "results_table_name",
    "row_hashes",
    "rows_digest",
    "utcnow",
    "vectors_to_arrow",
]
