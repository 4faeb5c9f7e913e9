# Sourced by demo.sh and test.sh: create .venv beside the repo root (once) and install genflow
# into it, with the extras named in $1 (e.g. "[dev]").
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${1:-}"
