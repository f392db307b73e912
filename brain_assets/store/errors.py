"""The store's own error type."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A store operation that cannot be done (unknown dataset, brain key, embeddings key...)."""
