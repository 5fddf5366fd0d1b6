#!/usr/bin/env bash
# Regenerate tests/fixtures/hpsv3/reference.json: HPSv3 scores of the tiny random HPSv3 computed by
# the authors' own package (hpsv3==1.0.0), which pins transformers==4.45.2 and so lives in a
# throw-away virtualenv OUTSIDE the repo (default: ${TMPDIR:-/tmp}/psr-hpsv3-venv; VENV=... to change).
# tests/unit/test_hpsv3.py compares our `hpsv3` reward with the stored values.
#
# The full dependency set of hpsv3 (deepspeed, trl, datasets, ...) is not needed for inference and
# deepspeed does not build without CUDA: hpsv3 is installed with --no-deps plus exactly what its
# `import hpsv3` chain imports. torch 2.14.1 + torchvision 0.29.1: the package imports torchvision,
# which does not import beside the small torch 2.13.0 CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-${TMPDIR:-/tmp}/psr-hpsv3-venv}
WORK=${WORK:-$(mktemp -d)}
FIXTURES=tests/fixtures/hpsv3

if [ ! -x "$VENV/bin/python" ]; then
  echo "[hpsv3-reference] creating $VENV"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q transformers==4.45.2 "trl==0.11.4" "peft==0.13.2" accelerate omegaconf fire \
  pandas matplotlib tensorboard datasets rich safetensors pyyaml qwen-vl-utils
"$VENV/bin/python" -m pip install -q --no-deps hpsv3==1.0.0

echo "[hpsv3-reference] tiny HPSv3 and fixture images (project environment)"
.venv/bin/python scripts/hpsv3_reference.py prepare --tiny "$WORK/hpsv3" --images "$FIXTURES"
echo "[hpsv3-reference] scoring with the authors' package ($VENV)"
(cd "$WORK" && "$VENV/bin/python" "$OLDPWD/scripts/hpsv3_reference.py" run \
   --tiny "$WORK/hpsv3" --images "$OLDPWD/$FIXTURES" --out "$OLDPWD/$FIXTURES/reference.json")
echo "[hpsv3-reference] done: $FIXTURES/reference.json (then: .venv/bin/python -m pytest tests/unit/test_hpsv3.py)"
