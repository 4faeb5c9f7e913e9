#!/usr/bin/env bash
# The test suite on the oldest torch genflow supports (pyproject: torch>=2.4), in a virtual
# environment of its own beside the repo root (.venv-torch2.4; about 5 GB to install once).
# CI runs scripts/test.sh on the newest torch; run this before relying on a newer torch API.
#   bash scripts/test_min_torch.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))'; then
    echo "test_min_torch.sh: torch 2.4.1 has wheels for Python 3.10-3.12; $PY is $("$PY" -V 2>&1)" \
        "(set PYTHON=python3.12 or similar)" >&2
    exit 2
fi
VENV=.venv-torch2.4
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.4.1" "torchvision==0.19.1"
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.4.'), torch.__version__"
exec "$VENV/bin/python" -m pytest "$@"
