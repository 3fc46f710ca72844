#!/usr/bin/env bash
# `make demo`: run ntk's main jobs on data/sample/ with the embedded default model (no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_OUT:-demo-out}
S=data/sample
mkdir -p "$OUT"
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

say "ntk models list"
ntk models list

say "ntk segment: per-nucleotide tracks for yeast chr I, III, VI (817 kb)"
ntk segment "$S/genome.fa.gz" -o "$OUT/segment" --force

say "ntk score-variants: the sample VCF (SNVs, indels, MNV, multi-allelic, symbolic, wrong REF)"
ntk score-variants "$S/variants.vcf" --reference "$S/genome.fa.gz" -o "$OUT/variants.vcf.gz" \
    --table "$OUT/variants.parquet" --force

say "ntk embed: a few gene regions (minus-strand genes reverse-complemented)"
zcat "$S/genes.gtf.gz" | awk -F'\t' '$3=="gene" && $1=="I" {
    match($9, /gene_id "[^"]+"/); id=substr($9, RSTART+9, RLENGTH-10);
    print $1"\t"$4-1"\t"$5"\t"id"\t0\t"$7 }' | head -n 8 > "$OUT/genes.bed"
ntk embed -R "$OUT/genes.bed" --reference "$S/genome.fa.gz" -o "$OUT/embeddings.parquet" --force

say "ntk plot: predicted tracks against the annotation of YAL003W (EFB1, one intron)"
ntk plot "$OUT/segment" -r I:141601-143800 -a "$S/genes.gtf.gz" -o "$OUT/tracks.png" --force

say "outputs"
ls -l "$OUT" "$OUT/segment" >&2
python - "$OUT" <<'PY'
import sys, polars as pl
out = sys.argv[1]
t = pl.read_parquet(f"{out}/variants.parquet")
print(f"variants scored: {t.height} (record, ALT) rows; status counts:", dict(t.group_by("status").len().iter_rows()), file=sys.stderr)
e = pl.read_parquet(f"{out}/embeddings.parquet")
print(f"embeddings: {e.height} rows x {len(e['embedding'][0])} dims", file=sys.stderr)
PY
if command -v bcftools >/dev/null; then bcftools query -f '%CHROM\t%POS\t%REF\t%ALT\t%INFO/NTK_STATUS\t%INFO/NTK_COS\n' "$OUT/variants.vcf.gz" | awk 'NR<=5' >&2; fi
echo "demo outputs in $OUT/ (tracks: $OUT/segment/*.bw, calls: $OUT/segment/segments.bed.gz, picture: $OUT/tracks.png)" >&2
