# Sourced by the scripts: a project-local Dagster instance and data directory.
# The values come from the environment if set, else from ./.env (written by scripts/setup.sh,
# also read by dagster and brain when run from the repository root), else the defaults below.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -f "$ROOT/.env" ]; then
  while IFS='=' read -r _key _value; do
    case "$_key" in
      DAGSTER_HOME | BRAIN_DAGSTER_STORAGE_DIR | BRAIN_DATA_DIR) ;;
      *) continue ;;
    esac
    _value="${_value%\"}"
    _value="${_value#\"}"
    case "$_value" in # NAME=${NAME:-/path}: the path
      "\${$_key:-"*"}") _value="${_value#"\${$_key:-"}" && _value="${_value%\}}" ;;
    esac
    if [ -z "${!_key:-}" ]; then export "$_key=$_value"; fi
  done < "$ROOT/.env"
  unset _key _value
fi
export DAGSTER_HOME="${DAGSTER_HOME:-$ROOT}"             # uses ./dagster.yaml
export BRAIN_DAGSTER_STORAGE_DIR="${BRAIN_DAGSTER_STORAGE_DIR:-$ROOT/.dagster_home}"
export BRAIN_DATA_DIR="${BRAIN_DATA_DIR:-$ROOT/data}"
export PATH="$ROOT/.venv/bin:$PATH"
mkdir -p "$BRAIN_DAGSTER_STORAGE_DIR"
