"""Rebuild data/sample/ from ../shared/data/yeast (run from the repository root).

genome.fa.gz  : S. cerevisiae R64-1-1 chromosomes I, III and VI (bgzip)
genes.gtf.gz  : Ensembl R64-1-1.96 annotation restricted to those chromosomes (bgzip)
variants.vcf  : a constructed (not observed) VCF on those chromosomes, see README.md
"""
import gzip
import random
import subprocess
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/yeast")
OUT = Path(__file__).resolve().parent
KEEP = ["I", "III", "VI"]


def read_fasta(path):
    name, chunks = None, []
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.startswith(">"):
                if name:
                    yield name, "".join(chunks)
                name, chunks = line[1:].split()[0], []
            else:
                chunks.append(line.strip())
    if name:
        yield name, "".join(chunks)


seqs = {n: s for n, s in read_fasta(SRC / "genome.fa.gz") if n in KEEP}
fa = OUT / "genome.fa"
with open(fa, "w") as f:
    for n in KEEP:
        f.write(f">{n}\n")
        s = seqs[n]
        for i in range(0, len(s), 60):
            f.write(s[i:i + 60] + "\n")
subprocess.run(["bgzip", "-f", str(fa)], check=True)

gtf = OUT / "genes.gtf"
with gzip.open(SRC / "genes.gtf.gz", "rt") as fi, open(gtf, "w") as fo:
    for line in fi:
        if line.startswith("#") or line.split("\t", 1)[0] in KEEP:
            fo.write(line)
subprocess.run(["bgzip", "-f", str(gtf)], check=True)

# constructed variants: SNVs every ~5 kb, a few indels/MNVs, a multi-allelic site, a symbolic ALT,
# a breakend and two records with a deliberately wrong REF
rng = random.Random(7)
rec = []
for chrom in KEEP:
    s = seqs[chrom]
    for pos in range(2500, len(s) - 2500, 5000):
        ref = s[pos - 1]
        alt = rng.choice([b for b in "ACGT" if b != ref])
        rec.append((chrom, pos, ref, alt, "snv"))
s = seqs["I"]
rec += [
    ("I", 12001, s[12000], s[12000] + "GATTACA", "insertion"),
    ("I", 22001, s[22000:22006], s[22000], "deletion"),
    ("I", 32001, s[32000:32002], "".join("ACGT"[("ACGT".index(c) + 1) % 4] for c in s[32000:32002]), "mnv"),
    ("I", 42001, s[42000], ",".join([b for b in "ACGT" if b != s[42000]][:2]), "multiallelic"),
    ("I", 52001, s[52000], "<DEL>", "symbolic"),
    ("I", 62001, s[62000], s[62000] + "[III:1000[", "breakend"),
    ("I", 72001, "ACGTACGTAC" if s[72000:72010] != "ACGTACGTAC" else "TTTTTTTTTT", "A", "ref_mismatch"),
    ("III", 1001, "N" if s[1000] != "N" else "A", "G", "ref_mismatch"),
]
order = {c: i for i, c in enumerate(KEEP)}
rec.sort(key=lambda r: (order[r[0]], r[1]))
with open(OUT / "variants.vcf", "w") as f:
    f.write("##fileformat=VCFv4.2\n##source=ntk data/sample/make_sample.py (constructed, not observed)\n")
    for n in KEEP:
        f.write(f"##contig=<ID={n},length={len(seqs[n])}>\n")
    f.write('##INFO=<ID=KIND,Number=1,Type=String,Description="What the constructed record exercises">\n')
    f.write('##INFO=<ID=SVTYPE,Number=1,Type=String,Description="Structural variant type">\n')
    f.write('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')
    f.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tsample1\n")
    for i, (c, p, r, a, kind) in enumerate(rec, 1):
        info = f"KIND={kind}" + (";SVTYPE=DEL" if a == "<DEL>" else "")
        gt = "0/1" if "," not in a else "1/2"
        f.write(f"{c}\t{p}\tntk{i}\t{r}\t{a}\t.\tPASS\t{info}\tGT\t{gt}\n")
print(f"wrote {OUT}: {sum(len(seqs[n]) for n in KEEP)} bp, {len(rec)} variants")
