"""Shared fixtures: a temporary store, small real images."""

from __future__ import annotations

import os

# No model hub is reachable from the tests: fail hub lookups at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
from milvus_server import milvus_uri  # noqa: F401  (session fixture: one Milvus server)
from PIL import Image

from dagster_brain.store import Store

FIRST = ("test_readme.py",)  # the longest file: started first when workers share the suite


def pytest_collection_modifyitems(config, items):
    """The README's blocks first: with ``-n 2 --dist loadfile`` the longest file starts at
    once instead of running alone at the end."""
    items.sort(key=lambda item: item.path.name not in FIRST)


@pytest.fixture
def store(tmp_path) -> Store:
    """An empty store in a temporary folder."""
    return Store(tmp_path / "data")


def write_images(folder, n: int, seed: int = 0, size: int = 32) -> list[str]:
    """``n`` random RGB PNGs; returns their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    return paths


def sample_frame(paths: list[str], prefix: str = "s") -> pd.DataFrame:
    """A minimal samples frame for ``Store.write_samples``."""
    return pd.DataFrame(
        {
            "sample_id": [f"{prefix}{i:03d}" for i in range(len(paths))],
            "filepath": paths,
            "tags": [[] for _ in paths],
            "content_hash": [f"h{i}" for i in range(len(paths))],
        }
    )
