"""Give a test the brain config that a set of ``BRAIN_*`` variables makes (no module global
is patched: the environment is set and the cached config re-read, then forgotten after)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

from dagster_brain.config import BrainConfig, get_brain_config, reset_brain_config


def use_brain_env(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]
) -> BrainConfig:
    """The notebook API's brain config for exactly ``env`` (other ``BRAIN_*`` variables unset);
    forgotten when the test ends. Runtime edits on the returned config reach the API."""
    for var in list(os.environ):
        if var.startswith("BRAIN_"):
            monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    reset_brain_config()
    request.addfinalizer(reset_brain_config)
    return get_brain_config()
