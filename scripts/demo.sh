#!/usr/bin/env bash
# Set up, then materialise every demo asset on the project's Dagster instance (brain demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
brain demo "$@"
