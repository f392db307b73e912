#!/usr/bin/env bash
# Set up, then materialise every brain asset of the demo datasets on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
brain materialize --select '*' "$@"
