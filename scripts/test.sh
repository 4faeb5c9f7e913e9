#!/usr/bin/env bash
# Set up from scratch (a .venv beside the repo root) and run the test suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenMP threads that sleep instead of spinning at barriers: on a busy machine a spinning thread
# burns the CPU its descheduled peers need (18 s a step instead of 0.7 s: BENCHMARKS.md).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
source scripts/venv.sh "[dev]"
exec .venv/bin/python -m pytest "$@"
