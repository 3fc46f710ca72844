#!/usr/bin/env bash
# `make embedded-model`: the exact recipe of ntk's embedded default model (ntk/models/ntk-yeast-tiny).
#
# Data: S. cerevisiae R64-1-1 (../shared/data/yeast) and Arabidopsis thaliana TAIR10.1 chromosome 1
# (../shared/data/arabidopsis), merged by scripts/embedded/prepare_data.py into $WORK/data/genome.fa + genes.gtf
# (chr1 cut into At1_pre / At1 / At1_val / At1_test; UTRs = exon minus CDS). Held out of every stage: yeast XVI
# and At1_test (chr1 27.90-30.43 Mbp); validation: yeast XV and At1_val (chr1 26.90-27.90 Mbp).
# Stages (in ntk's own commands; seeds fixed; DEVICE=cuda to use a GPU; THREADS: CPU threads of each process):
#   1. ntk pretrain: a 4-layer, 128-wide NT-v2-style encoder (scripts/embedded/config.json) on every contig of
#      both genomes except the validation and test ones (yeast I-XIV, Mito, At1_pre, At1: ~37 Mbp), masked-LM,
#      PRETRAIN_STEPS x 16,384 tokens; validation loss on XV, XVI, At1_val, At1_test against the unigram baseline.
#   2. ntk finetune segment from stage 1 on yeast I-XIV, Mito and At1, 7 features, 1,536-nt windows, batch 16,
#      with ntk's nucleotide head (--nucleotide-head 32: dilated convolutions over the bases and the U-Net
#      features, model/heads.py), FINETUNE_STEPS steps, best/ by validation AUPRC on XV + At1_val; concurrently, for the same wall-clock and
#      the same number of CPU threads, the dilated-CNN baseline of scripts/eval_segmentation.py trains on the
#      same contigs.
#   3. evaluation on yeast XVI and the first 1 Mbp of At1_test (scripts/eval_segmentation.py: the stage-2 model,
#      OLD_MODEL (default: the model installed now, to compare against), the CNN and k-mer baselines).
#   install: copy a model into ntk/models/ntk-yeast-tiny (INSTALL_FROM, default the stage-2 best/).
# STAGES selects stages (default "1 2 3"); install is a separate, explicit stage.
set -euo pipefail
cd "$(dirname "$0")/../.."
YEAST=${YEAST:-../shared/data/yeast}
ARABIDOPSIS=${ARABIDOPSIS:-../shared/data/arabidopsis}
WORK=${WORK:-build/embedded}
DEVICE=${DEVICE:-auto}
STAGES=${STAGES:-1 2 3}
THREADS=${THREADS:-1}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-600}
PRETRAIN_THREADS=${PRETRAIN_THREADS:-2}
FINETUNE_STEPS=${FINETUNE_STEPS:-3500}
NUC_HEAD=${NUC_HEAD:-32}
NTK=${NTK:-ntk}
OLD_MODEL=${OLD_MODEL:-$WORK/old_model}
FEATURES=protein_coding_gene,exon,intron,splice_donor,splice_acceptor,5UTR,3UTR
TRAIN=I,II,III,IV,V,VI,VII,VIII,IX,X,XI,XII,XIII,XIV,Mito,At1
HELD_OUT=XV,XVI,At1_val,At1_test
mkdir -p "$WORK"
has() { case " $STAGES " in *" $1 "*) return 0;; *) return 1;; esac; }
log() { echo "[$(date -u +%H:%M:%S)] embedded-model: $*" >&2; }

if has 1 || has 2; then
  python scripts/embedded/prepare_data.py "$WORK/data" --yeast "$YEAST" --arabidopsis "$ARABIDOPSIS"
fi

if has 1; then
  log "stage 1: pretraining ($PRETRAIN_STEPS steps)"
  $NTK pretrain "$WORK/data/genome.fa" -o "$WORK/pretrain" --config scripts/embedded/config.json \
      --val-chroms "$HELD_OUT" --seq-len 512 --steps "$PRETRAIN_STEPS" --tokens-per-batch 16384 --lr 2e-3 \
      --schedule cosine --rc-aug --eval-every 200 --val-windows 64 --save-every 200 --seed 0 \
      --device "$DEVICE" --threads "$PRETRAIN_THREADS" --force
fi

if has 2; then
  log "stage 2: segmentation fine-tuning ($FINETUNE_STEPS steps) and the CNN baseline alongside"
  $NTK finetune segment --model "$WORK/pretrain/final" --reference "$WORK/data/genome.fa" \
      --annotation "$WORK/data/genes.gtf" --features "$FEATURES" --train-chroms "$TRAIN" \
      --val-chroms XV,At1_val --window 1536 --method full --pos-weight auto --rc-augment --nucleotide-head "$NUC_HEAD" \
      --steps "$FINETUNE_STEPS" --batch-size 16 --lr 1e-3 --warmup 0.02 --weight-decay 0.01 --eval-every 500 \
      --patience 0 --monitor auprc --max-eval-windows 64 --seed 0 --device "$DEVICE" --threads "$THREADS" \
      -o "$WORK/segment" --force &
  ft=$!
  echo "$ft" > "$WORK/segment.pid"
  if [ "${SKIP_CNN:-0}" != 1 ]; then
    OMP_NUM_THREADS="$THREADS" python scripts/eval_segmentation.py train-cnn --genome "$WORK/data/genome.fa" \
        --annotation "$WORK/data/genes.gtf" --features "$FEATURES" --train-chroms "$TRAIN" \
        --while-pid "$ft" --device "$DEVICE" -o "$WORK/cnn"
  fi
  wait "$ft"
fi

if has 3; then
  log "stage 3: held-out evaluation"
  if [ ! -e "$OLD_MODEL/model.safetensors" ] && [ "$OLD_MODEL" = "$WORK/old_model" ]; then
    mkdir -p "$OLD_MODEL" && cp ntk/models/ntk-yeast-tiny/config.json ntk/models/ntk-yeast-tiny/model.safetensors "$OLD_MODEL/"
  fi
  python scripts/eval_segmentation.py evaluate --genome "$WORK/data/genome.fa" \
      --annotation "$WORK/data/genes.gtf" --features "$FEATURES" --train-chroms "$TRAIN" \
      --test-chroms XVI,At1_test:1-1000000 --model "$WORK/segment/best" --names new \
      --model "$OLD_MODEL" --names old --cnn "$WORK/cnn" \
      --device "$DEVICE" -o "$WORK/heldout_metrics.json" | tee "$WORK/heldout_metrics.md"
fi

if has install; then
  dest=ntk/models/ntk-yeast-tiny
  mkdir -p "$dest"
  src=${INSTALL_FROM:-$WORK/segment/best}
  cp "$src/config.json" "$src/model.safetensors" "$dest/"
  log "installed the embedded default model into $dest"
fi
