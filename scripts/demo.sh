#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, train the default config (a small UNet with
# DDPM on scikit-learn's 8x8 handwritten digits) on the CPU, sample 64 digits with DDIM in 50
# steps and write them as a PNG grid. About 3-4 minutes on 2 CPU cores.
#   bash scripts/demo.sh [extra genflow-train overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenMP threads that spin only briefly at barriers before they sleep: on a busy machine a spinning
# thread burns the CPU its descheduled peers need (BENCHMARKS.md, "Training on a busy CPU").
[ -n "${OMP_WAIT_POLICY:-}" ] || export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-10000}"
source scripts/venv.sh ""   # no extras
RUN=runs/demo
.venv/bin/genflow-train run_dir="$RUN" trainer.device=cpu "$@"
.venv/bin/genflow-sample --ckpt "$RUN/checkpoints/last.pt" --sampler ddim --steps 50 --num 64 \
    --out "$RUN/ddim50" --no-progress
.venv/bin/python - "$RUN/ddim50/grid.png" <<'PY'
import sys
from PIL import Image
path = sys.argv[1]
big = path.replace(".png", "_x4.png")
image = Image.open(path)
image.resize((image.width * 4, image.height * 4), Image.NEAREST).save(big)
print(f"demo: 64 digits sampled with DDIM (50 steps): {path} (4x enlarged: {big})")
PY
