"""The store as a Dagster resource: one data directory with a DuckDB file and Parquet copies."""

from __future__ import annotations

import dagster as dg

from dagster_brain.store import Store


class BrainStoreResource(dg.ConfigurableResource):
    """Opens the embedded DuckDB + Parquet store under ``data_dir``."""

    data_dir: str

    def get(self) -> Store:
        """The store (connections are opened per operation, so steps may run in parallel)."""
        return Store(self.data_dir)
