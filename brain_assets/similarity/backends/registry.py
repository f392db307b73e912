"""Backend name -> adapter class: the one place a backend is registered.

Each adapter class describes itself (``name``, ``metrics``, ``sdk``, ``Settings``,
``embedded``); the tables other modules read are live views of :data:`BACKENDS`, so a
backend registered here (or added to the mapping at run time) shows up everywhere.
Adapters import their SDKs lazily, so importing them all here is cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from dagster_brain.similarity.backends.base import VectorBackend
from dagster_brain.similarity.backends.exact import SklearnBackend
from dagster_brain.similarity.backends.lancedb_backend import LanceDBBackend
from dagster_brain.similarity.backends.milvus_backend import MilvusBackend
from dagster_brain.similarity.backends.pinecone_backend import PineconeBackend
from dagster_brain.similarity.backends.qdrant_backend import QdrantBackend

BACKENDS: dict[str, type[VectorBackend]] = {
    cls.name: cls
    for cls in (SklearnBackend, QdrantBackend, MilvusBackend, LanceDBBackend, PineconeBackend)
}

_T = TypeVar("_T")


class BackendTable(Mapping[str, _T], Generic[_T]):
    """A read-only table derived from :data:`BACKENDS` (always current)."""

    def __init__(self, column: Callable[[type[VectorBackend]], _T]):
        self._column = column

    def __getitem__(self, name: str) -> _T:
        return self._column(BACKENDS[name])

    def __iter__(self) -> Iterator[str]:
        return iter(BACKENDS)

    def __len__(self) -> int:
        return len(BACKENDS)


# What each backend offers, so a spec can be refused when the YAML is read.
BACKEND_METRICS: Mapping[str, tuple[str, ...]] = BackendTable(lambda cls: tuple(cls.metrics))
# The package whose version shapes each backend's answers (recorded with every run).
SDKS: Mapping[str, str] = BackendTable(lambda cls: cls.sdk)


def backend_class(name: str) -> type[VectorBackend]:
    """The adapter class of a backend name; a clear error for unknown names."""
    if name not in BACKENDS:
        raise ValueError(f"unknown similarity backend {name!r}; available: {sorted(BACKENDS)}")
    return BACKENDS[name]


def backend_defaults() -> dict[str, dict[str, Any]]:
    """Each registered backend's brain-config defaults."""
    return {name: cls.defaults() for name, cls in BACKENDS.items()}


def check_settings(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """A backend's settings checked against its ``Settings`` (unregistered names: as given)."""
    cls = BACKENDS.get(name)
    return dict(params) if cls is None else cls.check_settings(params)


def embedded_reason(name: str, settings: Mapping[str, Any]) -> str | None:
    """Why a backend with these settings lives in one process on one host (None: shareable)."""
    cls = BACKENDS.get(name)
    return None if cls is None else cls.embedded(settings)
