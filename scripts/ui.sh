#!/usr/bin/env bash
# Open the Dagster UI on the project-local instance, http://127.0.0.1:3000, with the embeddings
# viewer beside it, http://127.0.0.1:3100 (viewer_port; BRAIN_VIEWER_PORT), which the
# visualization assets link to. Both listen on 127.0.0.1 only; the viewer stops when
# `dagster dev` exits (Ctrl-C stops both).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

python -m dagster_brain.viewer --data-dir "$BRAIN_DATA_DIR" &
VIEWER_PID=$!
stop_viewer() {
  kill "$VIEWER_PID" 2>/dev/null || true
  wait "$VIEWER_PID" 2>/dev/null || true
}
trap stop_viewer EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

dagster dev -w workspace.yaml -h 127.0.0.1 -p "${PORT:-3000}"
