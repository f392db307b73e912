#!/usr/bin/env bash
# Set up, then run the test suite (and the definitions check).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/milvus_server.sh install   # the Milvus standalone server the tests start (own venv)
bash scripts/ui_deps.sh                 # chromium (apt) + playwright (pip) for the browser test
source scripts/env.sh
dagster definitions validate -w workspace.yaml
python -m pytest "$@"
