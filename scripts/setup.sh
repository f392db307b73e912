#!/usr/bin/env bash
# Create or reuse the project-local virtual environment (.venv) with everything installed.
# torch is pinned to the CPU build in constraints.txt; see README "Install".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.brain-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing dagster-brain and its dependencies (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev,distributed]'
  echo "$want" > "$stamp"
else
  echo "[setup] .venv is up to date"
fi
# ./.env: absolute DAGSTER_HOME, BRAIN_DAGSTER_STORAGE_DIR, BRAIN_DATA_DIR, so that dagster dev,
# dagster asset materialize and brain work from the repository root with nothing exported.
.venv/bin/python scripts/write_env.py "$PWD"
