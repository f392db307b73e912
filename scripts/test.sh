#!/usr/bin/env bash
# Set up, then run the test suite (and the definitions check).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/milvus_server.sh install   # the Milvus standalone server the tests start (own venv)
bash scripts/ui_deps.sh                 # chromium (apt) + playwright (pip) for the browser test
source scripts/env.sh
dagster definitions validate -w workspace.yaml
# two workers, a test file each at a time (module fixtures and the README's block order
# stay on one worker); the README's blocks are scheduled first (tests/conftest.py)
python -m pytest -n "${BRAIN_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
