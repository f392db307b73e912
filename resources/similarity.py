"""Similarity backends as Dagster resources: connection settings from the brain config.

Definitions build one resource per exposed backend from the merged brain config; secrets
(API keys, passwords, tokens) are passed as ``dg.EnvVar`` so the UI never shows them.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field

from dagster_brain.config import BrainConfig, is_secret


class SimilarityBackendResource(dg.ConfigurableResource):
    """Settings of one backend; ``params()`` feeds the adapter."""

    backend: ClassVar[str]

    def params(self) -> dict[str, Any]:
        """The set (non-None) settings."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class SklearnSimilarityResource(SimilarityBackendResource):
    """The default exact in-process backend (Parquet beside the store)."""

    backend: ClassVar[str] = "sklearn"
    mean_center: bool = Field(default=False, description="subtract the mean before cosine")
    approximate: bool | None = Field(default=None, description="None: automatic by size")
    approx_threshold: int | None = Field(default=None, description="vectors above which ANN")


class QdrantSimilarityResource(SimilarityBackendResource):
    """Qdrant: local mode (a folder per index) unless ``url`` names a server."""

    backend: ClassVar[str] = "qdrant"
    url: str | None = None
    api_key: str | None = None
    path: str | None = None


class MilvusSimilarityResource(SimilarityBackendResource):
    """Milvus: milvus-lite (a file per index) unless ``uri`` names a server."""

    backend: ClassVar[str] = "milvus"
    uri: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    db_name: str | None = None
    consistency_level: str | None = None


class LanceDBSimilarityResource(SimilarityBackendResource):
    """LanceDB: an embedded table on disk (``uri`` folder)."""

    backend: ClassVar[str] = "lancedb"
    uri: str | None = None


class PineconeSimilarityResource(SimilarityBackendResource):
    """Pinecone: the cloud service (or any host speaking its REST protocol)."""

    backend: ClassVar[str] = "pinecone"
    api_key: str | None = None
    host: str | None = None
    namespace: str | None = None
    cloud: str | None = None
    region: str | None = None


RESOURCE_CLASSES: dict[str, type[SimilarityBackendResource]] = {
    cls.backend: cls
    for cls in (
        SklearnSimilarityResource,
        QdrantSimilarityResource,
        MilvusSimilarityResource,
        LanceDBSimilarityResource,
        PineconeSimilarityResource,
    )
}


def resource_key(backend: str) -> str:
    """Resource key of a backend in the Definitions."""
    return f"similarity_{backend}"


def similarity_resources(config: BrainConfig) -> dict[str, SimilarityBackendResource]:
    """One resource per exposed built-in backend, from the merged brain config."""
    out: dict[str, SimilarityBackendResource] = {}
    for backend, params in config.as_dict()["similarity_backends"].items():
        cls = RESOURCE_CLASSES.get(backend)
        if cls is None:
            continue
        kwargs: dict[str, Any] = {}
        for name in cls.model_fields:
            env = f"BRAIN_SIMILARITY_{backend.upper()}_{name.upper()}"
            if is_secret(name) and os.environ.get(env):
                kwargs[name] = dg.EnvVar(env)
            elif params.get(name) is not None:
                kwargs[name] = params[name]
        out[resource_key(backend)] = cls(**kwargs)
    return out
