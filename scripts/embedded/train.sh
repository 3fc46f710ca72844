#!/usr/bin/env bash
# `make embedded-model`: the exact recipe of ntk's embedded default model (ntk/models/ntk-yeast-tiny).
#
# Data: S. cerevisiae R64-1-1 (../shared/data/yeast) and Arabidopsis thaliana TAIR10.1 chromosome 1
# (../shared/data/arabidopsis), merged by scripts/embedded/prepare_data.py into $WORK/data/genome.fa + genes.gtf
# (chr1 cut into At1_pre / At1 / At1_val / At1_test; UTRs = exon minus CDS). Held out of every stage: yeast XVI
# and At1_test (chr1 27.90-30.43 Mbp); validation: yeast XV and At1_val (chr1 26.90-27.90 Mbp).
# Stages (in ntk's own commands; seeds fixed; DEVICE=cuda to use a GPU):
#   1. the yeast model (v1): ntk pretrain (4-layer, 128-wide NT-v2-style encoder, scripts/embedded/config.json,
#      6.5 M tokens) + ntk finetune segment on 5 yeast features. Skipped when STAGE1_MODEL names its result
#      (a SegmentNT checkpoint, e.g. the v1 weights: git show 0d97b62:ntk/models/ntk-yeast-tiny/...).
#   2. ntk finetune segment from stage 1 on yeast + Arabidopsis, 7 features (the U-Net and the 5 known features'
#      output rows are reused, 5UTR/3UTR start fresh), 3,072-nt windows; concurrently, for the same wall-clock,
#      the dilated-CNN baseline of scripts/eval_segmentation.py trains on the same contigs.
#   3. evaluation on yeast XVI and the first 1 Mbp of At1_test (scripts/eval_segmentation.py: the stage-2
#      model (final/: the end of its cosine schedule), the stage-1 model, the CNN and k-mer baselines).
#   install: copy a model into ntk/models/ntk-yeast-tiny (INSTALL_FROM, default the stage-2 final/).
# STAGES selects stages (default "1 2 3"). The shipped ntk-yeast-tiny is stage 1's result: stage 2 did not beat
# it on yeast XVI (ntk/models/README.md), so install is not a default stage.
set -euo pipefail
cd "$(dirname "$0")/../.."
YEAST=${YEAST:-../shared/data/yeast}
ARABIDOPSIS=${ARABIDOPSIS:-../shared/data/arabidopsis}
WORK=${WORK:-build/embedded}
DEVICE=${DEVICE:-auto}
STAGES=${STAGES:-1 2 3}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-400}
STAGE1_STEPS=${STAGE1_STEPS:-1500}
FINETUNE_STEPS=${FINETUNE_STEPS:-300}
NTK=${NTK:-ntk}
STAGE1_MODEL=${STAGE1_MODEL:-$WORK/stage1/segment/best}
OLD_MODEL=${OLD_MODEL:-$STAGE1_MODEL}
FEATURES=protein_coding_gene,exon,intron,splice_donor,splice_acceptor,5UTR,3UTR
TRAIN=I,II,III,IV,V,VI,VII,VIII,IX,X,XI,XII,XIII,XIV,Mito,At1
mkdir -p "$WORK"
has() { case " $STAGES " in *" $1 "*) return 0;; *) return 1;; esac; }

if has 1; then
  $NTK pretrain "$YEAST/genome.fa.gz" -o "$WORK/stage1/pretrain" --config scripts/embedded/config.json \
      --val-chroms XVI --seq-len 512 --steps "$PRETRAIN_STEPS" --tokens-per-batch 16384 --lr 2e-3 --warmup 40 \
      --schedule cosine --rc-aug --eval-every 100 --val-windows 64 --save-every 0 --seed 0 --device "$DEVICE" --force
  $NTK finetune segment --model "$WORK/stage1/pretrain/final" --reference "$YEAST/genome.fa.gz" \
      --annotation "$YEAST/genes.gtf.gz" --features protein_coding_gene,exon,intron,splice_donor,splice_acceptor \
      --val-chroms XV --test-chroms XVI --window 1536 --method full --pos-weight auto --steps "$STAGE1_STEPS" \
      --batch-size 16 --lr 1e-3 --warmup 0.02 --eval-every 250 --patience 0 --monitor mcc --max-eval-windows 64 \
      --seed 0 --device "$DEVICE" -o "$WORK/stage1/segment" --force
fi

if has 2; then
  python scripts/embedded/prepare_data.py "$WORK/data" --yeast "$YEAST" --arabidopsis "$ARABIDOPSIS"
  $NTK finetune segment --model "$STAGE1_MODEL" --reference "$WORK/data/genome.fa" \
      --annotation "$WORK/data/genes.gtf" --features "$FEATURES" --train-chroms "$TRAIN" \
      --val-chroms XV,At1_val --window 3072 --method full --pos-weight auto --steps "$FINETUNE_STEPS" \
      --batch-size 8 --lr 1e-3 --warmup 0.05 --weight-decay 0.01 --eval-every 50 --patience 0 --monitor mcc \
      --max-eval-windows 48 --seed 0 --device "$DEVICE" -o "$WORK/segment" --force &
  ft=$!
  echo "$ft" > "$WORK/segment.pid"
  if [ "${SKIP_CNN:-0}" != 1 ]; then
    python scripts/eval_segmentation.py train-cnn --genome "$WORK/data/genome.fa" \
        --annotation "$WORK/data/genes.gtf" --features "$FEATURES" --train-chroms "$TRAIN" \
        --while-pid "$ft" --device "$DEVICE" -o "$WORK/cnn"
  fi
  wait "$ft"
fi

if has 3; then
  python scripts/eval_segmentation.py evaluate --genome "$WORK/data/genome.fa" \
      --annotation "$WORK/data/genes.gtf" --features "$FEATURES" --train-chroms "$TRAIN" \
      --test-chroms XVI,At1_test:1-1000000 --model "$WORK/segment/final" --names ntk_yeast_tiny_v2 \
      --model "$OLD_MODEL" --names ntk_yeast_tiny_v1 --cnn "$WORK/cnn" \
      --device "$DEVICE" -o "$WORK/heldout_metrics.json" | tee "$WORK/heldout_metrics.md"
fi

if has install; then
  dest=ntk/models/ntk-yeast-tiny
  mkdir -p "$dest"
  src=${INSTALL_FROM:-$WORK/segment/final}
  cp "$src/config.json" "$src/model.safetensors" "$dest/"
  echo "installed the embedded default model into $dest" >&2
fi
