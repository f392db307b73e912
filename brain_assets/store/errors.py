"""The store's own error type."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A store operation that cannot be done (unknown dataset, brain key, embeddings key...)."""


class StoreReadOnly(StoreError):
    """A write to a store this process may only read (a read-only mount or folder)."""

    def __init__(self, data_dir: object) -> None:
        super().__init__(
            f"the store at {data_dir} is read-only here (a read-only mount or folder): reading "
            "works, writing needs a writable copy; point --data-dir / BRAIN_DATA_DIR at one"
        )
