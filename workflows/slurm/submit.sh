#!/usr/bin/env bash
# Segment GENOME with MODEL on a SLURM cluster in N array tasks, then merge into OUT.
#   workflows/slurm/submit.sh GENOME.fa MODEL OUT N ["more ntk segment options"]
# e.g. workflows/slurm/submit.sh hg38.fa.gz segment-nt hg38_segments 8 "--features exon,intron"
set -euo pipefail
if [ $# -lt 4 ]; then sed -n '2,4p' "$0"; exit 2; fi
here=$(cd "$(dirname "$0")" && pwd)
export GENOME=$1 MODEL=$2 OUT=$3 N=$4 EXTRA=${5:-}
array=$(sbatch --parsable --array="1-$N" --export=ALL "$here/segment_array.sbatch")
sbatch --parsable --dependency="afterok:${array%%;*}" --export=ALL "$here/merge.sbatch"
echo "submitted shards $array and the merge; output: $OUT" >&2
