#!/usr/bin/env bash
# Set up from scratch (a .venv beside the repo root) and run the test suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh "[dev]"
exec .venv/bin/python -m pytest "$@"
