"""The package as a user installs it: a wheel built from the sources, installed into a fresh
virtual environment outside the repository, used from a folder outside the repository.

Nothing is downloaded. The wheel is built without build isolation (this environment's
setuptools) from a copy of the sources in a temporary folder, so the repository gets no
``build/`` folder. The fresh environment gets the wheel with ``pip install --no-deps``; its
dependencies (dagster, torch, duckdb...) are made importable by one ``.pth`` file in its
site-packages naming this environment's site-packages (found from ``sysconfig`` of the running
interpreter, i.e. ``sys.prefix``). A plain path line in a ``.pth`` file only appends that
folder to ``sys.path``: the ``.pth`` files inside it (among them the editable install of this
repository) are not run, so ``dagster_brain`` can only come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# source folder -> import name (pyproject.toml [tool.setuptools.package-dir])
ROOTS = {"brain_assets": "dagster_brain", "resources": "dagster_brain/resources"}
ROOTS["sensors"] = "dagster_brain/sensors"


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    out = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, fresh venv's python, its bin folder, its site-packages, a cwd outside the repo)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for folder in ROOTS:
        shutil.copytree(
            REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    dist = tmp / "dist"
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check"]
        + ["--outdir", str(dist), str(src)],
        cwd=tmp,
    )
    (wheel,) = dist.glob("dagster_brain-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install"]
        + ["--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
        cwd=tmp,
    )
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=tmp,
        ).stdout.strip()
    )
    (site / "dependencies_from_dev_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp / "work"
    work.mkdir()
    return wheel, python, venv / "bin", site, work


def _env(work: Path) -> dict[str, str]:
    """The user's environment without this project's settings, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAIN_", "DAGSTER_"))}
    env.pop("PYTHONPATH", None)
    env.update(HF_HUB_OFFLINE="1", BRAIN_CONFIG_PATH=str(work / "no_config.json"))
    return env


def test_wheel_holds_every_subpackage_and_data_file(installed):
    wheel = installed[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder, target in ROOTS.items():
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                expected.add(f"{target}/{path.relative_to(REPO / folder).as_posix()}")
    assert sorted(expected - names) == []  # a subpackage missing from the packages list fails
    assert {"dagster_brain/brain_keys.yaml", "dagster_brain/py.typed"} <= names
    assert "dagster_brain/viewer/__init__.py" in names
    assert {n.split("/")[0] for n in names if not n.startswith("dagster_brain-")} == {
        "dagster_brain"
    }  # nothing at the generic top-level names resources/ or sensors/


def test_import_resolves_to_the_installed_package(installed):
    _, python, _, site, work = installed
    code = (
        "import dagster_brain, dagster_brain.api, dagster_brain.resources, dagster_brain.viewer;"
        "print(dagster_brain.__file__); print(dagster_brain.resources.__file__)"
    )
    out = _run([str(python), "-c", code], cwd=work, env=_env(work)).stdout.split()
    assert Path(out[0]) == site / "dagster_brain" / "__init__.py"
    assert Path(out[1]) == site / "dagster_brain" / "resources" / "__init__.py"
    assert REPO not in Path(out[0]).parents


def test_brain_command_runs(installed):
    _, _, bin_dir, _, work = installed
    out = _run([str(bin_dir / "brain"), "--help"], cwd=work, env=_env(work))
    assert "materialize" in out.stdout and "ingest" in out.stdout
    version = _run([str(bin_dir / "brain"), "--version"], cwd=work, env=_env(work))
    assert "0.1.0" in version.stdout


def test_brain_demo_help(installed):
    _, _, bin_dir, _, work = installed
    out = subprocess.run(
        [str(bin_dir / "brain"), "demo", "--help"],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if "No such command 'demo'" in out.stderr:
        pytest.skip("this version of the CLI has no `brain demo` command")
    assert out.returncode == 0, out.stderr
    assert "Usage: brain demo" in out.stdout


def test_installed_package_materialises_a_tiny_dataset(installed):
    _, python, bin_dir, _, work = installed
    rng = np.random.default_rng(0)
    for i in range(6):
        folder = work / "images" / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    (work / "tiny.yaml").write_text(
        "datasets:\n"
        f"  - {{name: tiny, source: {{type: image_folder, path: {work / 'images'}}}}}\n"
        "embeddings:\n"
        "  - {key: default, dataset: tiny}\n"
        "brain_runs:\n"
        "  - {brain_key: uniqueness, kind: uniqueness, dataset: tiny, embeddings: default, k: 2}\n"
    )
    data = work / "data"
    out = _run(
        [str(bin_dir / "brain"), "materialize", "--brain-keys", "tiny.yaml", "--select", "*"]
        + ["--data-dir", str(data)],
        cwd=work,
        env=_env(work),
    )
    for asset in ("tiny/samples", "tiny/embeddings/default", "tiny/brain/uniqueness"):
        assert asset in out.stdout  # one line per asset (the exact layout is the CLI's)
    assert "not materialized" not in out.stdout and "FAILED" not in out.stdout
    code = (
        "import dagster_brain as fob, sys;"
        "r = fob.load_dataset('tiny', sys.argv[1]).load_brain_results('uniqueness');"
        "print(len(r), r['uniqueness'].between(0, 1).all())"
    )
    check = _run([str(python), "-c", code, str(data)], cwd=work, env=_env(work))
    assert check.stdout.split() == ["6", "True"]
