#!/usr/bin/env bash
# The brain graph on PostgreSQL + Celery (docs/deployment.md).
#
#   bash scripts/distributed.sh workers [N [CELERY_ARGS]]
#                                             start N Celery workers (default 2) on this host;
#                                             Ctrl-C stops them (e.g. `workers 4 --pool=solo`)
#   bash scripts/distributed.sh run [ARGS]    run the job brain_all through them (ARGS: more
#                                             `dagster job execute` options, e.g. -c run.yaml)
#   bash scripts/distributed.sh materialize --select KEYS
#                                             materialise these assets through them (KEYS:
#                                             comma-separated, e.g. digits/brain/uniqueness)
#   bash scripts/distributed.sh ui            the Dagster UI on the distributed instance
#
# Settings (environment; defaults for the services on 127.0.0.1):
#   BRAIN_PG_URL          postgresql+psycopg2://postgres@127.0.0.1:5432/brain (made if missing)
#   BRAIN_CELERY_BROKER   redis://127.0.0.1:6379/0;  BRAIN_CELERY_BACKEND: the broker
#   BRAIN_CELERY_QUEUE    dagster;  BRAIN_CELERY_CONCURRENCY: steps at once per worker, 1
#   BRAIN_WORKER_NAME     node name prefix, brain (workers are <prefix>_<i>@<host>)
#   BRAIN_DISTRIBUTED_HOME  DAGSTER_HOME, .dagster_home/distributed (dagster.yaml written there)
#   BRAIN_DATA_DIR        the shared data dir (DuckDB store, Parquet, indexes), ./data
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export DAGSTER_HOME="${BRAIN_DISTRIBUTED_HOME:-$ROOT/.dagster_home/distributed}"
export BRAIN_DAGSTER_STORAGE_DIR="${BRAIN_DAGSTER_STORAGE_DIR:-$DAGSTER_HOME/storage}"
source scripts/env.sh
export BRAIN_EXECUTOR=celery
export BRAIN_PG_URL="${BRAIN_PG_URL:-postgresql+psycopg2://postgres@127.0.0.1:5432/brain}"
export BRAIN_CELERY_BROKER="${BRAIN_CELERY_BROKER:-redis://127.0.0.1:6379/0}"
export BRAIN_CELERY_BACKEND="${BRAIN_CELERY_BACKEND:-$BRAIN_CELERY_BROKER}"
export BRAIN_CELERY_QUEUE="${BRAIN_CELERY_QUEUE:-dagster}"
mkdir -p "$DAGSTER_HOME"
cp deploy/dagster.distributed.yaml "$DAGSTER_HOME/dagster.yaml"

ensure_database() {  # CREATE DATABASE once; the tables are made by Dagster on first use
  python - <<'PY'
import os

import psycopg2
from sqlalchemy.engine import make_url

url = make_url(os.environ["BRAIN_PG_URL"])
args = {"host": url.host, "port": url.port or 5432, "user": url.username, "password": url.password}
conn = psycopg2.connect(dbname="postgres", **args)
conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
with conn.cursor() as cur:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
    if cur.fetchone() is None:
        cur.execute(f'CREATE DATABASE "{url.database}"')
        print(f"[distributed] created database {url.database}")
conn.close()
PY
}

cmd="${1:-}"
shift || true
case "$cmd" in
  workers)
    n="${1:-2}"
    shift || true
    logs="$DAGSTER_HOME/logs"
    mkdir -p "$logs"
    ensure_database
    # Each worker gets its own process group (the dagster-celery wrapper starts celery as a
    # child), so stopping the script stops every worker and its children.
    pids=()
    stop_workers() {
      for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
      wait || true
    }
    trap stop_workers EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    for i in $(seq 1 "$n"); do
      name="${BRAIN_WORKER_NAME:-brain}_$i"
      # -i: load the definitions at start (a bad config fails here, not in the first step)
      setsid dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml \
        -q "$BRAIN_CELERY_QUEUE" -n "$name" -i dagster_brain.definitions -- \
        --concurrency "${BRAIN_CELERY_CONCURRENCY:-1}" "$@" >"$logs/$name.log" 2>&1 &
      pids+=("$!")
      echo "$!" >"$logs/$name.pgid"
      echo "[distributed] worker $name@$(hostname) (queue $BRAIN_CELERY_QUEUE): $logs/$name.log"
    done
    wait
    ;;
  run)
    ensure_database
    exec dagster job execute -m dagster_brain.definitions -a defs -j brain_all "$@"
    ;;
  materialize)
    ensure_database
    exec dagster asset materialize -m dagster_brain.definitions -a defs "$@"
    ;;
  ui)
    ensure_database
    exec dagster dev -w workspace.yaml -h 127.0.0.1 -p "${PORT:-3000}"
    ;;
  *)
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"
    exit 2
    ;;
esac
