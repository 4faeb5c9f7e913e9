#!/usr/bin/env bash
# Set up from scratch (a .venv beside the repo root) and run the test suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenMP threads that spin only briefly at barriers before they sleep: on a busy machine a spinning
# thread burns the CPU its descheduled peers need (BENCHMARKS.md, "Training on a busy CPU").
[ -n "${OMP_WAIT_POLICY:-}" ] || export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-10000}"
source scripts/venv.sh "[dev]"
exec .venv/bin/python -m pytest "$@"
