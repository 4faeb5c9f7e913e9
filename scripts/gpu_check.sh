#!/usr/bin/env bash
# The checks a session with a lent GPU runs, as one prepared command on that machine:
#   tests  the CUDA-marked tests (tests/test_cuda.py and the rest of `-m cuda`), at most 180 s
#   train  genflow-train on the default digits config on CUDA (bf16, 1500 steps), then
#          genflow-sample with DDIM-50 eager and with --cuda-graph, at most 180 s
#   bench  scripts/bench_gpu.py's full table (CIFAR-10 UNet), at most 320 s (designed for < 5 min)
# Logs, the grids and the table go to $OUT (the device tool's folder there), else runs/gpu_check.
#
# Prepare here: bash scripts/gpu_wheels.sh (hydra-core, omegaconf, POT for that machine, into .whl/).
# Then, with 15 minutes of device time (a machine's start takes 1-2 of them): run
# `bash scripts/gpu_check.sh tests train` with carry [".whl"] and timeout_s 400, then
# `bash scripts/gpu_check.sh bench` with timeout_s 340 on the still-warm machine, then give the
# machine back. Each stage's own time limit keeps the calls inside theirs.
#   bash scripts/gpu_check.sh [tests] [train] [bench]      (no stage named: all three)
# A dry run of the script itself on the CPU (no CUDA graph, bench --smoke, 20 training steps):
#   PYTHON=.venv/bin/python DEVICE=cpu bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
case $DEVICE in
    cuda) steps=1500 graph=--cuda-graph bench=() ;;
    cpu) steps=20 graph= bench=(--smoke) ;;
    *) echo "gpu_check.sh: DEVICE must be cuda or cpu (a dry run); got '$DEVICE'" >&2; exit 2 ;;
esac
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests train bench)
for stage in "${stages[@]}"; do
    case $stage in tests|train|bench) ;; *) echo "gpu_check.sh: unknown stage '$stage'; stages: tests train bench" >&2
                                           exit 2 ;; esac
done
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
fi
"$PY" - "$DEVICE" <<'PY' | tee "$OUT/machine.txt"
import sys, torch
if sys.argv[1] == "cuda":
    assert torch.cuda.is_available(), "gpu_check.sh: no CUDA device is visible"
name = torch.cuda.get_device_name() if sys.argv[1] == "cuda" else "CPU dry run"
print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, Python {sys.version.split()[0]}")
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
failed=()
for stage in "${stages[@]}"; do
    start=$SECONDS
    case $stage in
    tests)
        timeout 180 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tee "$OUT/tests.log" ;;
    train)
        run=runs/gpu_check_digits
        rm -rf "$run"
        { timeout 120 "$PY" -m genflow.train run_dir="$run" trainer.device="$DEVICE" trainer.precision=bf16 \
              trainer.steps=$steps trainer.progress=false &&
          timeout 30 "$PY" -m genflow.cli.sample --ckpt "$run/checkpoints/last.pt" --device "$DEVICE" \
              --sampler ddim --steps 50 --num 64 --no-progress --out "$run/eager" &&
          timeout 30 "$PY" -m genflow.cli.sample --ckpt "$run/checkpoints/last.pt" --device "$DEVICE" \
              --sampler ddim --steps 50 --num 64 --no-progress $graph --out "$run/graph" &&
          cp "$run/eager/grid.png" "$OUT/digits_ddim50.png" &&
          cp "$run/graph/grid.png" "$OUT/digits_ddim50_graph.png" &&
          "$PY" - "$run" <<'PY'
import json, sys
import numpy as np
run = sys.argv[1]
eager, graph = (np.load(f"{run}/{k}/samples.npz")["samples"] for k in ("eager", "graph"))
walls = [json.load(open(f"{run}/{k}/info.json"))["wall_s"] for k in ("eager", "graph")]
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
losses = [r["loss"] for r in rows if "loss" in r and not r.get("skipped")]
print(f"digits: loss {losses[0]:.3f} -> {losses[-1]:.3f}; DDIM-50 x64 eager {walls[0]:.2f} s, CUDA graph "
      f"{walls[1]:.2f} s; max |graph - eager| = {np.abs(graph - eager).max():.2e}")
PY
        } 2>&1 | tee "$OUT/train.log" ;;
    bench)
        timeout 320 "$PY" scripts/bench_gpu.py "${bench[@]}" --out runs/bench_gpu 2>&1 | tee "$OUT/bench.log" ;;
    esac
    code=${PIPESTATUS[0]}
    echo "gpu_check.sh: $stage exit $code in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    [ "$code" -eq 0 ] || failed+=("$stage")
done
[ ${#failed[@]} -eq 0 ] || { echo "gpu_check.sh: failed: ${failed[*]}" | tee -a "$OUT/summary.txt"; exit 1; }
