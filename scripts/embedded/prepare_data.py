"""Training data of the embedded model: yeast genome + Arabidopsis chromosome 1, one FASTA and one GTF.

- Yeast (``../shared/data/yeast``): every chromosome unchanged (``I`` .. ``XVI``, ``Mito``).
- Arabidopsis TAIR10.1 chromosome 1 (``NC_003070.9``, ``../shared/data/arabidopsis``) cut into three contigs
  at intergenic positions so that whole contigs can be held out: ``At1_pre`` (1 .. ``--train-start``-1: the
  centromere and the chromosome's first half, not used for fine-tuning, so that both species weigh about the
  same: ~10 Mbp each), ``At1`` (``--train-start`` .. ``--val-start``-1, training), ``At1_val`` (validation) and
  ``At1_test`` (``--test-start`` .. end, held out of everything). Contig
  coordinates are offsets into those pieces (``At1_test`` position 1 = chr1 position ``--test-start``);
  ``meta.json`` records the offsets. A cut that falls inside a gene is moved to the next intergenic position.
- UTRs: the RefSeq GTF has no UTR records, so for every transcript with a CDS the exon parts before the CDS
  (in transcript orientation) are written as ``five_prime_utr`` and those after it as ``three_prime_utr``
  (what Ensembl's UTR records are). Yeast's annotation has no UTRs (4 records): the UTR tracks are learnt
  from Arabidopsis and evaluated there only.

Usage: python scripts/embedded/prepare_data.py OUT_DIR  ->  OUT_DIR/genome.fa, OUT_DIR/genes.gtf, meta.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

AT = "NC_003070.9"


def read_fasta_gz(path: Path) -> dict[str, str]:
    out, name, chunks = {}, None, []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            if line.startswith(">"):
                if name is not None:
                    out[name] = "".join(chunks)
                name, chunks = line[1:].split()[0], []
            else:
                chunks.append(line.strip())
    if name is not None:
        out[name] = "".join(chunks)
    return out


def gene_spans(gtf: Path, chrom: str) -> list[tuple[int, int]]:
    spans = []
    with gzip.open(gtf, "rt") as fh:
        for line in fh:
            f = line.split("\t")
            if len(f) == 9 and f[0] == chrom and f[2] in ("gene", "transcript"):
                spans.append((int(f[3]), int(f[4])))
    return spans


def intergenic(pos: int, spans: list[tuple[int, int]]) -> int:
    """Smallest position >= pos (1-based) outside every gene span."""
    moved = True
    while moved:
        moved = False
        for s, e in spans:
            if s <= pos <= e:
                pos, moved = e + 1, True
    return pos


def write_fasta(fh, name: str, seq: str) -> None:
    fh.write(f">{name}\n")
    for i in range(0, len(seq), 80):
        fh.write(seq[i:i + 80] + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--yeast", default="../shared/data/yeast")
    ap.add_argument("--arabidopsis", default="../shared/data/arabidopsis")
    ap.add_argument("--train-start", type=int, default=16_000_001, help="1-based chr1 start of At1")
    ap.add_argument("--val-start", type=int, default=26_900_001, help="1-based chr1 start of At1_val")
    ap.add_argument("--test-start", type=int, default=27_900_001, help="1-based chr1 start of At1_test")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    yeast, at = Path(a.yeast), Path(a.arabidopsis)
    at_gtf = at / "AthaTAIR10_chr1.gtf.gz"
    spans = gene_spans(at_gtf, AT)
    r0 = intergenic(a.train_start, spans)
    v0 = intergenic(a.val_start, spans)
    t0 = intergenic(a.test_start, spans)
    at_seq = read_fasta_gz(at / "AthaTAIR10_chr1_GCF_000001735.4_TAIR10.1_genomic.fna.gz")[AT]
    pieces = [("At1_pre", 1, r0 - 1), ("At1", r0, v0 - 1), ("At1_val", v0, t0 - 1), ("At1_test", t0, len(at_seq))]

    tmp = out / "genome.fa.tmp"
    with open(tmp, "w") as fh:
        for name, seq in read_fasta_gz(yeast / "genome.fa.gz").items():
            write_fasta(fh, name, seq)
        for name, s, e in pieces:
            write_fasta(fh, name, at_seq[s - 1:e])
    tmp.replace(out / "genome.fa")

    def piece_of(s: int, e: int):
        for name, ps, pe in pieces:
            if ps <= s and e <= pe:
                return name, ps - 1
        return None, 0

    n_utr = defaultdict(int)
    dropped = 0
    tmp = out / "genes.gtf.tmp"
    with open(tmp, "w") as fo:
        with gzip.open(yeast / "genes.gtf.gz", "rt") as fh:
            for line in fh:
                if not line.startswith("#"):
                    fo.write(line)
        exons: dict[str, list] = defaultdict(list)
        cds: dict[str, list] = defaultdict(list)
        info: dict[str, tuple] = {}
        with gzip.open(at_gtf, "rt") as fh:
            for line in fh:
                if line.startswith("#"):
                    continue
                f = line.rstrip("\n").split("\t")
                if len(f) != 9 or f[0] != AT:
                    continue
                s, e = int(f[3]), int(f[4])
                name, off = piece_of(s, e)
                if name is None:
                    dropped += 1
                    continue
                f[0], f[3], f[4] = name, str(s - off), str(e - off)
                fo.write("\t".join(f) + "\n")
                m = re.search(r'transcript_id "([^"]+)"', f[8])
                if m and f[2] in ("exon", "CDS"):
                    (exons if f[2] == "exon" else cds)[m.group(1)].append((s - off, e - off))
                    gid = re.search(r'gene_id "([^"]*)"', f[8])
                    info[m.group(1)] = (name, f[6], gid.group(1) if gid else m.group(1))
        for tx, ex in exons.items():
            if tx not in cds:
                continue
            chrom, strand, gid = info[tx]
            c0 = min(s for s, _ in cds[tx])
            c1 = max(e for _, e in cds[tx])
            attrs = f'gene_id "{gid}"; transcript_id "{tx}"; note "derived: exon minus CDS";'
            for s, e in sorted(ex):
                for ps, pe, side in ((s, min(e, c0 - 1), "left"), (max(s, c1 + 1), e, "right")):
                    if ps > pe:
                        continue
                    five = (side == "left") == (strand == "+")
                    kind = "five_prime_utr" if five else "three_prime_utr"
                    n_utr[kind] += 1
                    fo.write(f"{chrom}\tderived\t{kind}\t{ps}\t{pe}\t.\t{strand}\t.\t{attrs}\n")
    tmp.replace(out / "genes.gtf")
    meta = {"arabidopsis_pieces": [{"contig": n, "chr1_start": s, "chr1_end": e} for n, s, e in pieces],
            "records_dropped_crossing_cuts": dropped, "derived_utr_records": dict(n_utr)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
