"""A real Milvus standalone server for tests (scripts/milvus_server.sh, its own venv).

Use the session-scoped fixture in a test module with ``milvus_uri = milvus_server.milvus_uri``
(or from a conftest). It installs ``.milvus-venv/`` once (skips the tests, saying why, only
when the package registry cannot be reached), starts the server on a free loopback port in a
temp folder, yields ``http://127.0.0.1:PORT`` and stops it (no process is left behind).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "milvus_server.sh"
# pip's words for "the registry cannot be reached" (anything else is a real failure)
OFFLINE_HINTS = (
    "Could not find a version that satisfies",
    "No matching distribution found",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_milvus_server() -> None:
    """Create .milvus-venv/ if missing; skip when the package registry cannot be reached."""
    proc = subprocess.run(
        ["bash", str(SCRIPT), "install"], capture_output=True, text=True, timeout=900
    )
    if proc.returncode == 0:
        return
    out = proc.stdout + proc.stderr
    if any(hint in out for hint in OFFLINE_HINTS):
        pytest.skip(f"Milvus server not installable (package registry unreachable): {out[-500:]}")
    raise RuntimeError(f"scripts/milvus_server.sh install failed:\n{out[-2000:]}")


@contextmanager
def running_milvus_server(data_dir: Path, attempts: int = 3) -> Iterator[str]:
    """Start a server on a free loopback port; yield its URI; stop it."""
    err = ""
    for _ in range(attempts):  # another process may grab the free port before milvus does
        port = free_port()
        proc = subprocess.run(
            ["bash", str(SCRIPT), "start", str(data_dir), str(port)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode == 0:
            break
        err = proc.stdout + proc.stderr
    else:
        raise RuntimeError(f"milvus server did not start in {data_dir}:\n{err[-2000:]}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(data_dir)], check=True, timeout=60)


@contextmanager
def milvus_server(data_dir: Path) -> Iterator[str]:
    """Install the server if needed, start it with its data in ``data_dir``; yield its URI;
    stop it (benchmarks use this too)."""
    install_milvus_server()
    with running_milvus_server(data_dir) as uri:
        yield uri


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a Milvus 2.3.5 standalone server running for this test session."""
    with milvus_server(tmp_path_factory.mktemp("milvus_server")) as uri:
        yield uri
