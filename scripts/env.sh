# Sourced by the scripts: a project-local Dagster instance and data directory.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DAGSTER_HOME="${DAGSTER_HOME:-$ROOT}"             # uses ./dagster.yaml
export BRAIN_DAGSTER_STORAGE_DIR="${BRAIN_DAGSTER_STORAGE_DIR:-$ROOT/.dagster_home}"
export BRAIN_DATA_DIR="${BRAIN_DATA_DIR:-$ROOT/data}"
export PATH="$ROOT/.venv/bin:$PATH"
mkdir -p "$BRAIN_DAGSTER_STORAGE_DIR"
