#!/usr/bin/env bash
# `make embedded-model`: the exact recipe of ntk's embedded default model (ntk/models/ntk-yeast-tiny).
#
# Data: S. cerevisiae R64-1-1 genome + Ensembl annotation (../shared/data/yeast). Chromosome XVI is held out
# of everything (pretraining validation and segmentation test); XV is the segmentation validation set.
# Steps, in ntk's own commands:
#   1. ntk pretrain: masked-LM pretraining of a 4-layer, 128-wide NT-v2-style encoder (scripts/embedded/config.json)
#   2. ntk finetune segment: SegmentNT-style U-Net head + full fine-tuning on 5 annotation features
#   3. evaluation on XVI (scripts/eval_segmentation.py: trained model, untrained head, k-mer logistic baseline)
#   4. copy best/ into ntk/models/ntk-yeast-tiny and write the metrics used by the model card
# Sized for a 2-core CPU (well under an hour); faster on a GPU (DEVICE=cuda). Seeds fixed.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/yeast}
WORK=${WORK:-build/embedded}
DEVICE=${DEVICE:-auto}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-400}
FINETUNE_STEPS=${FINETUNE_STEPS:-1500}
FEATURES=protein_coding_gene,exon,intron,splice_donor,splice_acceptor
NTK=${NTK:-ntk}
mkdir -p "$WORK"

$NTK pretrain "$DATA/genome.fa.gz" -o "$WORK/pretrain" --config scripts/embedded/config.json \
    --val-chroms XVI --seq-len 512 --steps "$PRETRAIN_STEPS" --tokens-per-batch 16384 --lr 2e-3 --warmup 40 \
    --schedule cosine --rc-aug --eval-every 100 --val-windows 64 --save-every 0 --seed 0 --device "$DEVICE" --force

$NTK finetune segment --model "$WORK/pretrain/final" --reference "$DATA/genome.fa.gz" \
    --annotation "$DATA/genes.gtf.gz" --features "$FEATURES" --val-chroms XV --test-chroms XVI \
    --window 1536 --method full --pos-weight auto --steps "$FINETUNE_STEPS" --batch-size 16 --lr 1e-3 \
    --warmup 0.02 --eval-every 250 --patience 0 --monitor mcc --max-eval-windows 64 --seed 0 \
    --device "$DEVICE" -o "$WORK/segment" --force

if [ "${SKIP_EVAL:-0}" != 1 ]; then
  python scripts/eval_segmentation.py --genome "$DATA/genome.fa.gz" --annotation "$DATA/genes.gtf.gz" \
      --features "$FEATURES" --test-chroms XVI --exclude-chroms XV,Mito \
      --model "$WORK/segment/best" --names ntk_yeast_tiny --untrained-base "$WORK/pretrain/final" \
      --device "$DEVICE" -o "$WORK/heldout_metrics.json" | tee "$WORK/heldout_metrics.md"
fi

if [ "${INSTALL:-1}" = 1 ]; then
  dest=ntk/models/ntk-yeast-tiny
  mkdir -p "$dest"
  cp "$WORK/segment/best/config.json" "$WORK/segment/best/model.safetensors" "$dest/"
  echo "installed the embedded default model into $dest" >&2
fi
