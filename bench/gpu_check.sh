#!/usr/bin/env bash
# The GPU check in one command, on a machine with only torch and transformers and no network
# (README "GPU check"):
#   python -m bench.gpu_wheels          # first, where PyPI is reachable: writes .gpu-wheels/
#   bash bench/gpu_check.sh [ARGS]      # then on the GPU machine, from the repository root
# Installs the carried wheels into .gpu-site with --target (the machine's own environment is left
# as it is), puts that folder first on PYTHONPATH and runs `python -m bench.gpu_suite ARGS`; the
# JSON report is printed and written to ${OUT:-.}/gpu_suite.json.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.gpu-wheels}
SITE=${SITE:-.gpu-site}
PY=${PYTHON:-python3}
if [ ! -d "$WHEELS" ]; then
  echo "gpu_check: no $WHEELS/ here; run 'python -m bench.gpu_wheels' where PyPI is reachable and carry the folder" >&2
  exit 2
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  echo "gpu_check: $("$PY" -V) found; the carried wheels are for Python 3.12 (set PYTHON=...)" >&2
  exit 2
fi
if [ ! -f "$SITE/.installed" ]; then
  "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
  touch "$SITE/.installed"
fi
export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m bench.gpu_suite --out "${OUT:-.}/gpu_suite.json" "$@"
