"""Backend name -> adapter class, imported lazily (optional SDKs load only when used)."""

from __future__ import annotations

import importlib

from dagster_brain.similarity.backends.base import VectorBackend

BACKENDS: dict[str, str] = {
    "sklearn": "dagster_brain.similarity.backends.exact:SklearnBackend",
    "qdrant": "dagster_brain.similarity.backends.qdrant_backend:QdrantBackend",
    "milvus": "dagster_brain.similarity.backends.milvus_backend:MilvusBackend",
    "lancedb": "dagster_brain.similarity.backends.lancedb_backend:LanceDBBackend",
    "pinecone": "dagster_brain.similarity.backends.pinecone_backend:PineconeBackend",
}

# What each backend offers (checked against the adapters' ``metrics`` by the tests), so a spec
# can be refused when the YAML is read, without importing any SDK.
BACKEND_METRICS: dict[str, tuple[str, ...]] = {
    "sklearn": ("cosine", "euclidean", "dotproduct"),
    "qdrant": ("cosine", "euclidean", "dotproduct"),
    "milvus": ("cosine", "euclidean", "dotproduct"),
    "lancedb": ("cosine", "euclidean", "dotproduct"),
    "pinecone": ("cosine", "euclidean", "dotproduct"),
}


def backend_class(name: str) -> type[VectorBackend]:
    """The adapter class of a backend name; a clear error for unknown names."""
    if name not in BACKENDS:
        raise ValueError(f"unknown similarity backend {name!r}; available: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)
