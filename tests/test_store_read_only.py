"""A store on a read-only mount opens for reading: read commands work, a write is refused with
one clear line naming the folder, and nothing is changed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from brain_env import use_brain_env
from click.testing import CliRunner
from conftest import sample_frame

from dagster_brain.cli import main
from dagster_brain.store import Store
from dagster_brain.store import core as store_core
from dagster_brain.store.errors import StoreReadOnly


def _make_store(folder: Path) -> None:
    store = Store(folder)
    store.write_samples("toy", sample_frame([f"/img/{i}.png" for i in range(4)]))


def _check_read_only(data: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    store = Store(data)
    assert store.read_only and store.sample_ids("toy") == ["s000", "s001", "s002", "s003"]
    with pytest.raises(StoreReadOnly, match=f"the store at {data} is read-only here"):
        store.write_samples("toy", sample_frame(["/img/x.png"], prefix="x"))
    out = CliRunner().invoke(main, ["datasets", "--data-dir", str(data)])
    assert out.exit_code == 0 and "toy" in out.output
    out = CliRunner().invoke(main, ["runs", "rename", "toy", "a", "b", "--data-dir", str(data)])
    assert out.exit_code != 0 and len(out.stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == before


def test_a_store_this_process_may_not_write_is_opened_for_reading(tmp_path, request, monkeypatch):
    use_brain_env(request, monkeypatch, {"BRAIN_DATA_DIR": str(tmp_path / "data")})
    monkeypatch.setenv("DAGSTER_HOME", "")
    monkeypatch.chdir(tmp_path)
    _make_store(tmp_path / "data")
    monkeypatch.setattr(store_core, "writable", lambda data_dir, db_path: False)
    _check_read_only(tmp_path / "data")


def test_a_store_on_a_real_read_only_mount(tmp_path, request, monkeypatch):
    """The same on a read-only bind mount (needs root and mount; skipped otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root")
    use_brain_env(request, monkeypatch, {"BRAIN_DATA_DIR": str(tmp_path / "ro")})
    monkeypatch.setenv("DAGSTER_HOME", "")
    monkeypatch.chdir(tmp_path)
    _make_store(tmp_path / "rw")
    (tmp_path / "ro").mkdir()
    mounted = subprocess.run(["mount", "--bind", str(tmp_path / "rw"), str(tmp_path / "ro")])
    if mounted.returncode != 0:
        pytest.skip("mount --bind is not allowed here")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(tmp_path / "ro")])
        if ro.returncode != 0:
            pytest.skip("remount read-only is not allowed here")
        _check_read_only(tmp_path / "ro")
    finally:
        subprocess.run(["umount", str(tmp_path / "ro")])
