#!/usr/bin/env bash
# One-line set-up on a fresh machine: a virtual environment in .venv with deepscope, its test
# dependencies, Ray (the dataset jobs' cluster engine, so its tests run) and (when run as root on Debian)
# headless Chromium for the report's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: these versions install from the local wheel cache on the project's machines
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test,umap,ray]"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: install chromium and chromium-driver for the browser test (tests marked 'browser')" >&2
  fi
fi
echo "deepscope is set up in .venv"
