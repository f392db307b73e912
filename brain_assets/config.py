"""The brain config: defaults < JSON file < ``BRAIN_*`` environment variables < runtime edits.

The JSON file defaults to ``~/.dagster_brain/brain_config.json`` and moves with
``BRAIN_CONFIG_PATH``. Environment variables:

- ``BRAIN_DATA_DIR``, ``BRAIN_BRAIN_KEYS_PATH``, ``BRAIN_DEFAULT_MODEL``,
  ``BRAIN_DEFAULT_SIMILARITY_BACKEND``, ``BRAIN_EXECUTOR``, ``BRAIN_REFRESH_CRON``: the
  top-level fields of the same names (``executor``: multiprocess, in_process or celery; see
  ``dagster_brain.execution``; ``refresh_cron``: the nightly refresh schedule, UTC);
- ``BRAIN_VIEWER_HOST``, ``BRAIN_VIEWER_PORT``: where the embeddings viewer listens
  (default ``127.0.0.1:3100``; ``brain view`` and ``make ui`` start it, and visualization
  assets link to it);
- ``BRAIN_STORE_MEMORY_LIMIT``: DuckDB's memory for the store in one process (default
  ``512MB``; e.g. ``2GB`` or ``25%``); larger writes and reads spill to disk beyond it;
- ``BRAIN_SIMILARITY_BACKENDS=a,b``: the backends exposed (hides the others; a name that is
  not built in declares a custom backend whose parameters come from the other settings);
- ``BRAIN_SIMILARITY_<BACKEND>_<PARAM>=value``: one backend parameter; values are parsed as
  JSON where they parse (numbers, booleans, ``null``), else kept as strings.

Secrets are masked whenever the config is printed (:mod:`dagster_brain.redact`): parameters
named like ``api_key``, ``password``, ``token``, ``secret``, and credentials inside values
(``http://user:pass@host`` -> ``http://****@host``, ``?api_key=...`` -> ``?api_key=****``).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dagster_brain.redact import SECRET_WORDS, is_secret, redact  # noqa: F401 (re-exported)

DEFAULT_CONFIG_PATH = Path("~/.dagster_brain/brain_config.json")
# a DuckDB memory limit: a size with its unit, or a share of the machine's memory
MEMORY_LIMIT = r"^[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB|%)$"


def builtin_backends() -> dict[str, dict[str, Any]]:
    """Each registered similarity backend's default settings (its adapter's ``Settings``)."""
    # imported here: the adapters use config helpers (is_secret) at import time
    from dagster_brain.similarity.backends.registry import backend_defaults

    return backend_defaults()


DEFAULTS: dict[str, Any] = {
    "data_dir": "data",
    "brain_keys_path": None,
    "default_model": "efficientnet-lite0",
    "default_similarity_backend": "sklearn",
    "similarity_backends": {},  # the registered backends' defaults: see defaults()
    "executor": "multiprocess",  # how runs execute steps (dagster_brain.execution)
    "refresh_cron": "0 3 * * *",  # the nightly_brain_refresh schedule (UTC)
    "viewer_host": "127.0.0.1",  # the embeddings viewer (`brain view`, `make ui`)
    "viewer_port": 3100,
    "store_memory_limit": "512MB",  # DuckDB's memory for the store, per process
}

TOP_LEVEL_ENV = (
    "data_dir",
    "brain_keys_path",
    "default_model",
    "default_similarity_backend",
    "executor",
    "refresh_cron",
    "viewer_host",
    "viewer_port",
    "store_memory_limit",
)


def defaults() -> dict[str, Any]:
    """The lowest config layer, with every registered backend's defaults."""
    return {**DEFAULTS, "similarity_backends": builtin_backends()}


class BrainConfigError(ValueError):
    """A brain config that cannot be used (bad JSON file, unknown backend...)."""


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def mask(value: Any) -> Any:
    """``'sk-abcdef1234'`` -> ``'****1234'``; short secrets are masked whole."""
    if value is None:
        return None
    text = str(value)
    return "****" + text[-4:] if len(text) >= 12 else "****"


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a config dict with every secret masked: secret-named values by :func:`mask`,
    credentials inside other values (URL userinfo, query-string keys) by ``redact``."""
    return redact(dict(config), secret=mask)


def read_json_layer(path: Path) -> dict[str, Any]:
    """The JSON file's settings ({} when the file does not exist)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BrainConfigError(f"brain config file {path}: invalid JSON ({err})") from err
    if not isinstance(data, dict):
        raise BrainConfigError(f"brain config file {path}: expected a JSON object")
    unknown = set(data) - set(DEFAULTS)
    if unknown:
        raise BrainConfigError(
            f"brain config file {path}: unknown fields {sorted(unknown)} "
            f"(known: {sorted(DEFAULTS)})"
        )
    return data


def read_env_layer(env: Mapping[str, str]) -> tuple[dict[str, Any], list[str] | None]:
    """Settings from ``BRAIN_*`` variables, and the exposed-backends list if set."""
    layer: dict[str, Any] = {}
    for name in TOP_LEVEL_ENV:
        var = f"BRAIN_{name.upper()}"
        if env.get(var):
            layer[name] = env[var]
    if "viewer_port" in layer:
        try:
            layer["viewer_port"] = int(layer["viewer_port"])
        except ValueError as err:
            raise BrainConfigError(
                f"environment variable BRAIN_VIEWER_PORT={layer['viewer_port']!r}: not a port "
                "number"
            ) from err
    exposed = None
    if env.get("BRAIN_SIMILARITY_BACKENDS"):
        exposed = [
            b.strip().lower() for b in env["BRAIN_SIMILARITY_BACKENDS"].split(",") if b.strip()
        ]
    known = set(builtin_backends()) | set(exposed or [])
    backends: dict[str, dict[str, Any]] = {}
    for var, raw in env.items():
        if not var.startswith("BRAIN_SIMILARITY_") or var == "BRAIN_SIMILARITY_BACKENDS":
            continue
        rest = var[len("BRAIN_SIMILARITY_") :].lower()
        backend = next(
            (b for b in sorted(known, key=len, reverse=True) if rest.startswith(b + "_")), None
        )
        if backend is None:
            raise BrainConfigError(
                f"environment variable {var}: no similarity backend named in it "
                f"(known: {sorted(known)}); declare custom ones in BRAIN_SIMILARITY_BACKENDS"
            )
        backends.setdefault(backend, {})[rest[len(backend) + 1 :]] = _parse_value(raw)
    if backends:
        layer["similarity_backends"] = backends
    return layer, exposed


class BrainConfig:
    """The merged brain config; attribute edits are the runtime layer (highest precedence)."""

    _FIELDS = tuple(DEFAULTS)

    def __init__(self, path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None):
        object.__setattr__(self, "_runtime", {})
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_env", env)
        self.reload()

    def reload(self) -> None:
        """Re-read the JSON file and the environment (runtime edits are kept)."""
        env = os.environ if self._env is None else self._env
        path = Path(self._path or env.get("BRAIN_CONFIG_PATH") or DEFAULT_CONFIG_PATH)
        path = path.expanduser()
        env_layer, exposed = read_env_layer(env)
        object.__setattr__(self, "config_path", path)
        object.__setattr__(self, "_file", read_json_layer(path))
        object.__setattr__(self, "_env_layer", env_layer)
        object.__setattr__(self, "_exposed", exposed)

    def as_dict(self) -> dict[str, Any]:
        """The merged settings (secrets in clear: do not print this; print ``masked``)."""
        merged = _merge(_merge(_merge(defaults(), self._file), self._env_layer), self._runtime)
        if self._exposed is not None:
            merged["similarity_backends"] = {
                b: merged["similarity_backends"].get(b, {}) for b in self._exposed
            }
        backend = merged["default_similarity_backend"]
        if backend not in merged["similarity_backends"]:
            raise BrainConfigError(
                f"default similarity backend {backend!r} is not among the exposed backends "
                f"{sorted(merged['similarity_backends'])}"
            )
        return merged

    def __getattr__(self, name: str) -> Any:
        if name in self._FIELDS:
            return self.as_dict()[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._FIELDS:
            raise BrainConfigError(f"brain config has no field {name!r} (fields: {self._FIELDS})")
        self._runtime[name] = value

    def set_backend_param(self, backend: str, param: str, value: Any) -> None:
        """Runtime edit of one backend parameter."""
        self._runtime.setdefault("similarity_backends", {}).setdefault(backend, {})[param] = value

    def backend_params(self, backend: str | None = None) -> dict[str, Any]:
        """Parameters of one similarity backend (the default when ``backend`` is None)."""
        merged = self.as_dict()
        name = backend or merged["default_similarity_backend"]
        if name not in merged["similarity_backends"]:
            raise BrainConfigError(
                f"unknown similarity backend {name!r}; available: "
                f"{sorted(merged['similarity_backends'])}"
            )
        return dict(merged["similarity_backends"][name])

    def to_json(self) -> str:
        """The merged config as JSON, secrets masked."""
        return json.dumps(masked(self.as_dict()), indent=4, sort_keys=True)

    def __repr__(self) -> str:
        return self.to_json()

    def settings(self) -> BrainSettings:
        """A frozen snapshot of the merged settings (what the Definitions hand to resources)."""
        return BrainSettings(**self.as_dict())


class BrainSettings(BaseModel):
    """The merged brain config, frozen: built once when the definitions load and handed to
    the resources (their fields), the executor and the checks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: str
    brain_keys_path: str | None = None
    default_model: str
    default_similarity_backend: str
    similarity_backends: Mapping[str, Mapping[str, Any]]
    executor: str
    refresh_cron: str | None = None
    viewer_host: str = "127.0.0.1"
    viewer_port: int = Field(default=3100, ge=1, le=65535)
    store_memory_limit: str = Field(default="512MB", pattern=MEMORY_LIMIT)

    @classmethod
    def from_env(
        cls, path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
    ) -> BrainSettings:
        """Defaults < JSON file < ``BRAIN_*`` environment variables (``env``: os.environ)."""
        return BrainConfig(path, env).settings()

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (secrets in clear: print ``to_json``)."""
        return copy.deepcopy(
            {
                **self.model_dump(),
                "similarity_backends": {b: dict(p) for b, p in self.similarity_backends.items()},
            }
        )

    def backend_params(self, backend: str | None = None) -> dict[str, Any]:
        """Parameters of one similarity backend (the default when ``backend`` is None)."""
        name = backend or self.default_similarity_backend
        if name not in self.similarity_backends:
            raise BrainConfigError(
                f"unknown similarity backend {name!r}; available: "
                f"{sorted(self.similarity_backends)}"
            )
        return copy.deepcopy(dict(self.similarity_backends[name]))

    def viewer_url(self, dataset: str, brain_key: str | None = None) -> str:
        """The embeddings viewer's page of a visualization run (or its index page)."""
        root = f"http://{self.viewer_host}:{self.viewer_port}"
        return f"{root}/plot/{dataset}/{brain_key}" if brain_key else f"{root}/"

    def report_url(self, dataset: str) -> str:
        """The embeddings viewer's page of a dataset's health report."""
        return f"http://{self.viewer_host}:{self.viewer_port}/report/{dataset}"

    def to_json(self) -> str:
        """The settings as JSON, secrets masked."""
        return json.dumps(masked(self.as_dict()), indent=4, sort_keys=True)

    def __repr__(self) -> str:
        return self.to_json()


@functools.cache
def get_brain_config() -> BrainConfig:
    """The notebook API's and CLI's brain config, built from the environment on first use
    (``fob.brain_config``: attribute edits are its runtime layer). Step code does not read it:
    its settings come from its resources. :func:`reset_brain_config` re-reads the environment."""
    return BrainConfig()


def reset_brain_config() -> None:
    """Forget the brain config (and its runtime edits): the next use re-reads the environment."""
    get_brain_config.cache_clear()
