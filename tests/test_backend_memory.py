"""A new backend is one adapter module + one registry line + its contract-test parameter.

tests/memory_backend.py declares a throwaway backend; the one line below registers it, and
everything else (config defaults and validation, spec metric checks, the Dagster resource,
the embedded-store refusal, the unreachable-backend error and the query contract) follows
from its declaration without touching any other module.
"""

import numpy as np
import pytest
from backend_contract import check_contract
from memory_backend import _COLLECTIONS, MemoryBackend

from dagster_brain.config import BrainConfig
from dagster_brain.execution import embedded_reason
from dagster_brain.resources.similarity import RESOURCE_CLASSES, similarity_resources
from dagster_brain.similarity.backends import registry
from dagster_brain.similarity.backends.base import BackendUnavailable, UnsupportedMetric
from dagster_brain.similarity.compute import backend_settings, resolve_backend
from dagster_brain.specs import SimilaritySpec


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, MemoryBackend.name, MemoryBackend)  # the one line
    yield
    _COLLECTIONS.clear()


def config_with(tmp_path, **env):
    return BrainConfig(env={"BRAIN_CONFIG_PATH": str(tmp_path / "none.json"), **env})


@pytest.mark.parametrize("metric", MemoryBackend.metrics)
def test_contract(tmp_path, metric):
    cls = registry.backend_class("memory")
    check_contract(lambda c, d, m: cls(c, d, m, tmp_path), metric=metric)
    # views longer than max_filter_ids are answered by the base class's exact scan
    small = type("SmallFilters", (cls,), {"max_filter_ids": 10})
    check_contract(lambda c, d, m: small(c, d, m, tmp_path), metric=metric)


def test_the_registry_views_follow(tmp_path):
    assert registry.BACKEND_METRICS["memory"] == ("cosine", "euclidean")
    assert registry.SDKS["memory"] == "numpy"
    assert "memory" in registry.BACKEND_METRICS and "memory" in registry.SDKS


def test_config_defaults_and_validation(tmp_path, monkeypatch):
    config = config_with(tmp_path, BRAIN_SIMILARITY_MEMORY_WHERE="test://ram").settings()
    assert config.backend_params("memory") == {
        "metric": "cosine",
        "where": "test://ram",
        "token": None,
        "down": False,
        "fail_upsert_after": None,
    }
    # what a run uses: config < overrides (API keywords, resource values), checked
    assert backend_settings("memory", {"fail_upsert_after": "3"}, config)["fail_upsert_after"] == 3
    assert backend_settings("memory", None, config)["where"] == "test://ram"  # the settings given
    with pytest.raises(ValueError, match=r"'memory' settings: fail_upsert_after"):
        backend_settings("memory", {"fail_upsert_after": "soon"}, config)
    bad = config_with(tmp_path, BRAIN_SIMILARITY_MEMORY_DOWN="sometimes")
    with pytest.raises(ValueError, match=r"'memory' settings: down: .*\(got 'sometimes'\)"):
        similarity_resources(bad)
    secret = config_with(tmp_path, BRAIN_SIMILARITY_MEMORY_TOKEN="[1, 2]")  # a list, not a str
    with pytest.raises(ValueError, match="'memory' settings: token") as err:
        similarity_resources(secret)
    assert "[1, 2]" not in str(err.value)  # secrets are never echoed
    with pytest.raises(ValueError, match=r"'memory' settings: fail_upsert_after"):
        SimilaritySpec(
            brain_key="s",
            kind="similarity",
            dataset="d",
            embeddings="e",
            backend="memory",
            backend_params={"fail_upsert_after": "never"},
        )


def test_metric_validation(tmp_path):
    fields = {"brain_key": "s", "kind": "similarity", "dataset": "d", "embeddings": "e"}
    spec = SimilaritySpec(**fields, backend="memory", metric="euclidean")
    assert resolve_backend(spec, config_with(tmp_path).settings()) == "memory"
    with pytest.raises(ValueError, match="'memory' does not support metric 'dotproduct'"):
        SimilaritySpec(**fields, backend="memory", metric="dotproduct")
    with pytest.raises(UnsupportedMetric, match="supported: cosine, euclidean"):
        MemoryBackend("c", 3, "dotproduct", tmp_path)


def test_resource_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAIN_SIMILARITY_MEMORY_TOKEN", "tok-123456789")
    config = config_with(
        tmp_path,
        BRAIN_SIMILARITY_MEMORY_WHERE="test://ram",
        BRAIN_SIMILARITY_MEMORY_TOKEN="tok-123456789",
    )
    resource = similarity_resources(config)["similarity_memory"]
    assert type(resource) is RESOURCE_CLASSES["memory"]
    assert type(resource).__name__ == "MemorySimilarityResource"
    # connection settings only: metric and per-index fields are not resource fields
    assert sorted(type(resource).model_fields) == ["down", "token", "where"]
    assert resource.params() == {
        "where": "test://ram",
        "down": False,
        "token": "BRAIN_SIMILARITY_MEMORY_TOKEN",  # a dg.EnvVar: the UI shows the name only
    }
    assert "123456789" not in config.to_json()


def test_embedded_and_unreachable(tmp_path):
    assert embedded_reason("memory", {"where": "test://ram"}) == (
        "memory backend at test://ram: one process's memory"
    )
    backend = MemoryBackend("c", 3, "cosine", tmp_path, where="test://ram", down=True)
    with pytest.raises(BackendUnavailable, match="similarity backend 'memory' at test://ram"):
        backend.query(np.ones((1, 3), np.float32), 1)
    with pytest.raises(ValueError, match="'c': k must be >= 1, got 0"):
        backend.query(np.ones((1, 3), np.float32), 0)
    with pytest.raises(ValueError, match="holds 3-d vectors; got queries .* dimension 2"):
        backend.query(np.ones((1, 2), np.float32), 1)
