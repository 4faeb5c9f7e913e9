#!/usr/bin/env bash
# Wheels of genflow's dependencies that the lent GPU machine lacks, into .whl/ (ignored by git), for
# the device tool's `carry`. That machine has Python 3.12 with torch, torchvision, torchdiffeq,
# einops, tqdm, numpy, scipy, scikit-learn and pytest, but no hydra-core, omegaconf or POT, and it
# cannot download. scripts/gpu_check.sh installs what it finds in .whl/.
#   bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "hydra-core>=1.3,<1.4" "omegaconf>=2.2,<2.4" "pot>=0.9"
# antlr4's runtime (hydra's parser) is published as source only: a pure-Python wheel built here
python3 -m pip wheel --quiet --no-deps -w .whl "antlr4-python3-runtime==4.9.*"
ls -1 .whl
