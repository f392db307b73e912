"""The store as a Dagster resource: one data directory with a DuckDB file and Parquet copies."""

from __future__ import annotations

import dagster as dg

from dagster_brain.store import Store
from dagster_brain.store.connection import DEFAULT_MEMORY_LIMIT


class BrainStoreResource(dg.ConfigurableResource):
    """Opens the embedded DuckDB + Parquet store under ``data_dir``."""

    data_dir: str
    memory_limit: str = DEFAULT_MEMORY_LIMIT  # DuckDB's memory per process (brain config)

    def get(self) -> Store:
        """The store (connections are opened per operation, so steps may run in parallel)."""
        return Store(self.data_dir, memory_limit=self.memory_limit)
