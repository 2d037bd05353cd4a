#!/usr/bin/env bash
# `make test-reference`: parity of the Paddle models with torchvision / timm (not part of CI).
# Creates (or reuses) .venv-ref: a venv that sees the system site-packages (Paddle, this package) and adds
# torch, torchvision and timm, then runs the tests marked `reference` under tests/reference.
# Extra arguments go to pytest, e.g. `bash tests/reference/run.sh -k resnet -x`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-ref}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV (system site-packages visible, so Paddle is shared)"
    "$PYTHON" -m venv --system-site-packages "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, torchvision, timm" 2>/dev/null; then
    echo "installing torch, torchvision and timm into $VENV (a few minutes, once)"
    "$VENV/bin/python" -m pip install "torch==2.14.1" "torchvision==0.29.1" timm
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m reference tests/reference "$@"
