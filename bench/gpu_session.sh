#!/usr/bin/env bash
# The GPU checks of this repository in one run (how the GPU rows of bench/RESULTS.md were produced).
# Expects: wheels of pysam, pyBigWig and polars in .whl/ (the GPU image lacks them), the yeast and Arabidopsis data in .gpu/yeast, .gpu/arabidopsis,
# and $OUT for the files to bring back.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
printf '#!/bin/sh\nexec python3 -m ntk.cli.main "$@"\n' > /tmp/ntk && chmod +x /tmp/ntk
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/gpu_session.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$LOG"

echo "== core_throughput" | tee -a "$LOG"
timeout 120 python3 bench/core_throughput.py --device cuda --iters 10 --rounds 3 2>&1 | grep -v "Writing model" | tee -a "$LOG"

echo "== embedded model recipe (scripts/embedded/train.sh, DEVICE=cuda)" | tee -a "$LOG"
start=$(date +%s)
YEAST=.gpu/yeast ARABIDOPSIS=.gpu/arabidopsis NTK=/tmp/ntk DEVICE=cuda WORK=/tmp/emb STAGES="1 2" SKIP_CNN=1 \
    THREADS=4 PRETRAIN_THREADS=4 timeout 280 bash scripts/embedded/train.sh \
    > "$OUT/train.log" 2>&1
echo "recipe exit $? after $(( $(date +%s) - start )) s" | tee -a "$LOG"
tail -n 12 "$OUT/train.log" | tee -a "$LOG"
cp /tmp/emb/segment/best/config.json /tmp/emb/segment/best/model.safetensors "$OUT/" 2>/dev/null
cp /tmp/emb/segment/metrics.json "$OUT/finetune_metrics.json" 2>/dev/null
cp /tmp/emb/pretrain/summary.json "$OUT/pretrain_summary.json" 2>/dev/null

echo "== segment_gpu (full-size SegmentNT, random weights): one row per issue #19 optimisation" | tee -a "$LOG"
# rows: SDPA path/kernels, eager, forced SDPA kernels, batch sweep, end to end (writers in threads / processes),
# torch.compile, CUDA graphs; a failing row is recorded and the others go on (checked first with --cpu-smoke)
timeout 420 python3 bench/segment_gpu.py --mbp 3 --json "$OUT/segment_gpu_rows.json" \
    --rows sdpa,eager,sdpa-flash,sdpa-efficient,sdpa-math,batch,e2e,compile,cudagraphs 2>&1 \
    | grep -v "^W1\|torch/_dynamo" | tail -n 40 | tee -a "$LOG"
# ntk segment --compile on|cudagraphs end to end (each compiles the full-size model: its own time limit)
timeout 300 python3 bench/segment_gpu.py --mbp 3 --rows eager,e2e,e2e-compile --json "$OUT/segment_gpu_compile.json" \
    2>&1 | grep -v "^W1\|torch/_dynamo" | tail -n 12 | tee -a "$LOG"
timeout 100 python3 bench/segment_gpu.py --mbp 3 --crop 1872 --rows e2e 2>&1 | tail -n 8 | tee -a "$LOG"

echo "== variants_throughput on the GPU" | tee -a "$LOG"
timeout 200 python3 bench/variants_throughput.py --device cuda --variants 400 2>&1 | tail -n 5 | tee -a "$LOG"
timeout 120 python3 bench/variants_throughput.py --device cuda --variants 400 --scores cosine,l2,l1,dot 2>&1 \
    | tail -n 5 | tee -a "$LOG"
