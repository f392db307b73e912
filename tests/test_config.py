"""Brain config precedence: runtime > env > JSON file > defaults; secrets masked."""

import json

import pytest

from dagster_brain.config import BrainConfig, BrainConfigError


def test_precedence(tmp_path):
    path = tmp_path / "brain_config.json"
    path.write_text(
        json.dumps(
            {
                "default_similarity_backend": "qdrant",
                "similarity_backends": {
                    "qdrant": {"url": "http://file:6333"},
                    "milvus": {"uri": "file.db"},
                },
            }
        )
    )
    env = {
        "BRAIN_SIMILARITY_QDRANT_URL": "http://env:6333",
        "BRAIN_SIMILARITY_MILVUS_CONSISTENCY_LEVEL": "Bounded",
    }
    config = BrainConfig(env={**env, "BRAIN_CONFIG_PATH": str(path)})
    assert config.default_similarity_backend == "qdrant"  # file over default
    assert config.backend_params("qdrant")["url"] == "http://env:6333"  # env over file
    assert config.backend_params("milvus")["uri"] == "file.db"
    assert config.backend_params("milvus")["consistency_level"] == "Bounded"
    assert config.backend_params("sklearn")["metric"] == "cosine"  # default
    config.set_backend_param("qdrant", "url", "http://runtime:6333")
    config.default_similarity_backend = "lancedb"
    assert config.backend_params("qdrant")["url"] == "http://runtime:6333"  # runtime over env
    assert config.default_similarity_backend == "lancedb"


def test_env_default_backend_and_value_parsing(tmp_path):
    env = {
        "BRAIN_CONFIG_PATH": str(tmp_path / "none.json"),
        "BRAIN_DEFAULT_SIMILARITY_BACKEND": "milvus",
        "BRAIN_SIMILARITY_SKLEARN_MEAN_CENTER": "true",
    }
    config = BrainConfig(env=env)
    assert config.default_similarity_backend == "milvus"
    assert config.backend_params()["consistency_level"] == "Strong"
    assert config.backend_params("sklearn")["mean_center"] is True


def test_exposed_backends_and_custom_backend(tmp_path):
    env = {
        "BRAIN_CONFIG_PATH": str(tmp_path / "none.json"),
        "BRAIN_SIMILARITY_BACKENDS": "sklearn,my_db",
        "BRAIN_SIMILARITY_MY_DB_URL": "http://127.0.0.1:1",
    }
    config = BrainConfig(env=env)
    assert sorted(config.similarity_backends) == ["my_db", "sklearn"]
    assert config.backend_params("my_db") == {"url": "http://127.0.0.1:1"}
    with pytest.raises(BrainConfigError, match="unknown similarity backend 'qdrant'"):
        config.backend_params("qdrant")
    bad = BrainConfig(env={**env, "BRAIN_DEFAULT_SIMILARITY_BACKEND": "qdrant"})
    with pytest.raises(BrainConfigError, match="not among the exposed"):
        bad.as_dict()


def test_secrets_are_masked_when_printed(tmp_path):
    env = {
        "BRAIN_CONFIG_PATH": str(tmp_path / "none.json"),
        "BRAIN_SIMILARITY_PINECONE_API_KEY": "pcsk_supersecretvalue1234",
    }
    config = BrainConfig(env=env)
    assert config.backend_params("pinecone")["api_key"] == "pcsk_supersecretvalue1234"
    text = config.to_json()
    assert "supersecret" not in text and "****1234" in text
    assert "supersecret" not in repr(config)


def test_bad_file_and_unknown_fields(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(BrainConfigError, match="invalid JSON"):
        BrainConfig(env={"BRAIN_CONFIG_PATH": str(path)})
    path.write_text(json.dumps({"default_backend": "x"}))
    with pytest.raises(BrainConfigError, match="unknown fields"):
        BrainConfig(env={"BRAIN_CONFIG_PATH": str(path)})
    config = BrainConfig(env={"BRAIN_CONFIG_PATH": str(tmp_path / "none.json")})
    with pytest.raises(BrainConfigError, match="no field"):
        config.not_a_field = 1
    with pytest.raises(BrainConfigError, match="no similarity backend"):
        BrainConfig(
            env={"BRAIN_CONFIG_PATH": str(tmp_path / "n.json"), "BRAIN_SIMILARITY_NOPE_URL": "x"}
        )


def test_refresh_cron_comes_from_the_brain_config(tmp_path, monkeypatch, request):
    import json

    from brain_env import use_brain_env

    from dagster_brain.config import BrainConfigError
    from dagster_brain.sensors.schedules import build_schedules

    path = tmp_path / "brain_config.json"
    path.write_text(json.dumps({"refresh_cron": "30 1 * * *"}))
    for env, want in (
        ({"BRAIN_CONFIG_PATH": str(path)}, "30 1 * * *"),  # the JSON file
        ({"BRAIN_CONFIG_PATH": str(path), "BRAIN_REFRESH_CRON": "*/15 * * * *"}, "*/15 * * * *"),
    ):
        use_brain_env(request, monkeypatch, env)
        assert build_schedules()[0].cron_schedule == want
    use_brain_env(
        request, monkeypatch, {"BRAIN_CONFIG_PATH": str(path), "BRAIN_REFRESH_CRON": "nightly"}
    )
    with pytest.raises(BrainConfigError, match="'nightly' is not a cron expression"):
        build_schedules()


def test_settings_snapshot_is_frozen_with_the_same_precedence(tmp_path):
    from pydantic import ValidationError

    from dagster_brain.config import BrainSettings

    path = tmp_path / "brain_config.json"
    path.write_text(
        json.dumps(
            {
                "default_similarity_backend": "qdrant",
                "similarity_backends": {"qdrant": {"url": "http://file:6333"}},
            }
        )
    )
    env = {
        "BRAIN_CONFIG_PATH": str(path),
        "BRAIN_SIMILARITY_QDRANT_URL": "http://env:6333",
        "BRAIN_SIMILARITY_PINECONE_API_KEY": "pcsk_supersecretvalue1234",
    }
    settings = BrainSettings.from_env(env=env)
    assert settings.default_similarity_backend == "qdrant"  # file over default
    assert settings.backend_params("qdrant")["url"] == "http://env:6333"  # env over file
    assert settings.backend_params()["url"] == "http://env:6333"  # the default backend's
    assert settings.backend_params("sklearn")["metric"] == "cosine"  # default
    with pytest.raises(ValidationError):
        settings.default_model = "other"
    settings.backend_params("qdrant")["url"] = "changed"  # a copy: the snapshot keeps its value
    assert settings.backend_params("qdrant")["url"] == "http://env:6333"
    assert "supersecret" not in settings.to_json() and "****1234" in repr(settings)
    with pytest.raises(BrainConfigError, match="unknown similarity backend 'nope'"):
        settings.backend_params("nope")
    config = BrainConfig(env=env)
    config.set_backend_param("qdrant", "url", "http://runtime:6333")
    snapshot = config.settings()  # runtime over env
    config.set_backend_param("qdrant", "url", "http://later:6333")
    assert snapshot.backend_params("qdrant")["url"] == "http://runtime:6333"


def test_notebook_config_is_read_once_until_reset(tmp_path, monkeypatch):
    from dagster_brain.config import get_brain_config, reset_brain_config

    monkeypatch.setenv("BRAIN_CONFIG_PATH", str(tmp_path / "none.json"))
    monkeypatch.setenv("BRAIN_DEFAULT_MODEL", "first")
    reset_brain_config()
    try:
        config = get_brain_config()
        config.default_similarity_backend = "lancedb"  # a runtime edit sticks
        monkeypatch.setenv("BRAIN_DEFAULT_MODEL", "second")
        assert get_brain_config() is config and config.default_model == "first"
        assert get_brain_config().default_similarity_backend == "lancedb"
        reset_brain_config()
        again = get_brain_config()
        assert again.default_model == "second" and again.default_similarity_backend == "sklearn"
    finally:
        reset_brain_config()


def test_store_memory_limit_reaches_duckdb(tmp_path):
    """BRAIN_STORE_MEMORY_LIMIT over the file over the 512MB default, refused when it is not
    a size, and the store's DuckDB connections use it."""
    from pydantic import ValidationError

    from dagster_brain.store import Store

    path = tmp_path / "brain_config.json"
    path.write_text(json.dumps({"store_memory_limit": "2GB"}))
    assert (
        BrainConfig(env={"BRAIN_CONFIG_PATH": str(tmp_path / "none.json")})
        .settings()
        .store_memory_limit
        == "512MB"
    )
    assert BrainConfig(env={"BRAIN_CONFIG_PATH": str(path)}).store_memory_limit == "2GB"
    env = {"BRAIN_CONFIG_PATH": str(path), "BRAIN_STORE_MEMORY_LIMIT": "256MB"}
    settings = BrainConfig(env=env).settings()
    assert settings.store_memory_limit == "256MB"
    with pytest.raises(ValidationError, match="store_memory_limit"):
        BrainConfig(env={**env, "BRAIN_STORE_MEMORY_LIMIT": "lots"}).settings()
    store = Store(tmp_path / "data", memory_limit=settings.store_memory_limit)
    with store.connect() as conn:
        limit = conn.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert limit == "244.1 MiB"  # 256 MB as DuckDB prints it
