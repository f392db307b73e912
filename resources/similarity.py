"""Similarity backends as Dagster resources: connection settings from the brain config.

Definitions build one resource per exposed registered backend from the merged brain config;
each resource class is derived from its adapter's ``Settings`` (the connection settings, not
the per-index ones such as ``metric``). Secrets (API keys, passwords, tokens) are passed as
``dg.EnvVar`` so the UI never shows them, as are values carrying credentials (a URL with
``user:pass@`` or ``?api_key=``); set elsewhere, they stay out of the resource.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field, create_model

from dagster_brain.config import BrainConfig, BrainSettings
from dagster_brain.redact import has_credentials, is_secret
from dagster_brain.similarity.backends.base import VectorBackend
from dagster_brain.similarity.backends.registry import BACKENDS, BackendTable, check_settings


class SimilarityBackendResource(dg.ConfigurableResource):
    """Settings of one backend; ``params()`` feeds the adapter."""

    backend: ClassVar[str]

    def params(self) -> dict[str, Any]:
        """The set (non-None) settings."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


@functools.cache
def resource_class(adapter: type[VectorBackend]) -> type[SimilarityBackendResource]:
    """The resource class of an adapter: its connection settings, each optional."""
    settings = adapter.Settings
    fields: dict[str, Any] = {}
    for name in settings.resource_fields():
        info = settings.model_fields[name]
        optional = info.annotation | None  # type: ignore[operator]
        fields[name] = (optional, Field(default=None, description=info.description))
    stem = adapter.__name__.removesuffix("Backend")
    cls = create_model(  # type: ignore[call-overload]
        f"{stem}SimilarityResource",
        __base__=SimilarityBackendResource,
        __doc__=settings.__doc__,
        __module__=__name__,
        **fields,
    )
    cls.backend = adapter.name
    return cls


# backend name -> its resource class (derived from the registry)
RESOURCE_CLASSES: Mapping[str, type[SimilarityBackendResource]] = BackendTable(resource_class)


def resource_key(backend: str) -> str:
    """Resource key of a backend in the Definitions."""
    return f"similarity_{backend}"


def similarity_resources(
    config: BrainSettings | BrainConfig,
) -> dict[str, SimilarityBackendResource]:
    """One resource per exposed registered backend, its fields from the brain settings built
    when the definitions load (checked against the backend's ``Settings``: a bad value is
    refused naming backend and setting). Secrets and values carrying credentials are
    ``dg.EnvVar`` when an environment variable sets them, else left out (the step reads them
    from the brain config), so Dagster never stores or shows them."""
    out: dict[str, SimilarityBackendResource] = {}
    for backend, params in config.as_dict()["similarity_backends"].items():
        if backend not in BACKENDS:
            continue
        params = check_settings(backend, params)
        cls = RESOURCE_CLASSES[backend]
        kwargs: dict[str, Any] = {}
        for name in cls.model_fields:
            env = f"BRAIN_SIMILARITY_{backend.upper()}_{name.upper()}"
            secret = is_secret(name) or has_credentials(params.get(name))
            if secret and os.environ.get(env):
                kwargs[name] = dg.EnvVar(env)
            elif params.get(name) is not None and not secret:
                kwargs[name] = params[name]
            # a secret set elsewhere (JSON file, runtime edit) stays out of the resource, whose
            # config Dagster stores and shows: the step takes it from the brain config
        out[resource_key(backend)] = cls(**kwargs)
    return out
