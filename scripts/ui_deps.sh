#!/usr/bin/env bash
# Install what the browser test (tests/test_ui_browser.py, marker `ui`) needs: Debian's
# `chromium` package and the `playwright` Python package in .venv. Playwright drives the system
# Chromium (`executable_path`); its own browser download (`playwright install`) is never used.
# Idempotent, and a no-op when both are there. Without root the apt step only warns, and the
# test skips with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

warn() { echo "[ui-deps] WARNING: $*" >&2; }

if [ -x /usr/bin/chromium ]; then
  echo "[ui-deps] chromium: present (/usr/bin/chromium)"
else
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    SUDO=(none)
  fi
  if [ "${SUDO[*]}" = none ]; then
    warn "not root and no passwordless sudo: run 'apt-get install -y chromium' as root;" \
      "the browser test will be skipped"
  else
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show chromium >/dev/null 2>&1; then
      echo "[ui-deps] apt-get update (chromium not in the package lists)"
      "${SUDO[@]}" apt-get update -qq || warn "apt-get update failed"
    fi
    echo "[ui-deps] apt-get install chromium"
    "${SUDO[@]}" apt-get install -y -qq chromium >/dev/null \
      || warn "apt-get install chromium failed: the browser test will be skipped"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  warn ".venv missing: run scripts/setup.sh first"
  exit 0
fi
if .venv/bin/python -c "import playwright.sync_api" 2>/dev/null; then
  echo "[ui-deps] playwright: present in .venv"
else
  echo "[ui-deps] pip install playwright (the Python package only; no browser download)"
  .venv/bin/python -m pip install -q -c constraints.txt playwright \
    || warn "pip install playwright failed: the browser test will be skipped"
fi
