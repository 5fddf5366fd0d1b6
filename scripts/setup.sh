#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the project and its dev extras,
# and redis-server (via apt-get, when missing and running as root) for the integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision first, pinned together (torchvision must match torch exactly).
.venv/bin/python -m pip install -q -c constraints.txt torch torchvision
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"

# System tools the tests use: redis-server (queue tests) and a compose parser (docker-compose.yml check).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  missing+=(docker-compose)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "[setup] missing ${missing[*]}: install them (apt-get install ${missing[*]}) for the queue tests" >&2
  fi
fi
echo "[setup] done: $(.venv/bin/psr --help | head -1)"
