#!/usr/bin/env bash
# The fp8 checks of issue #19 that need a GPU (compute capability 8.9+), in one run (~5 min on an H100/H200):
# the real torch._scaled_mm path against the emulated math, fp8 vs bf16 accuracy on the embedded model and on
# random full-size SegmentNT weights with the trained 30 kb windows, and segment_gpu's eager and fp8 rows.
# Same environment as bench/gpu_session.sh (wheels in .whl/, yeast data beside the repository); $OUT: results.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/fp8_gpu_check.log"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv | tee "$LOG"
echo "== tests/test_fp8.py on the GPU (the CUDA test runs here; the CPU ones too)" | tee -a "$LOG"
timeout 240 python3 -m pytest -q -x tests/test_fp8.py -k "cuda or float8_linear or scaled_mm" 2>&1 | tail -n 5 | tee -a "$LOG"
echo "== fp8_accuracy on the GPU (embedded model XVI:1-400000; full-size random weights, 8 x 30 kb)" | tee -a "$LOG"
timeout 300 python3 bench/fp8_accuracy.py --device cuda --region XVI:1-400000 --windows 8 --window 30000 2>&1 \
    | tail -n 45 | tee -a "$LOG"
echo "== segment_gpu eager and fp8 rows" | tee -a "$LOG"
timeout 240 python3 bench/segment_gpu.py --mbp 3 --rows eager,fp8 --json "$OUT/segment_gpu_fp8.json" 2>&1 \
    | tail -n 8 | tee -a "$LOG"
