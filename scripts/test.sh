#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, slow end-to-end tests included.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/python -m pytest -q "$@"
status=$?
if [ "$status" = "5" ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
