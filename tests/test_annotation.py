"""Annotation -> per-nucleotide targets: feature definitions (GTF, GFF3, BED), bedtools agreement, errors."""
import gzip
import subprocess

import numpy as np
import pytest

from ntk.errors import InputError
from ntk.io.annotation import detect_format, read_annotation
from ntk.io.fasta import IndexedFasta

from conftest import need_tool

LENGTHS = {"chrA": 2000, "chrB": 1000}

# + strand transcript t1: exons 101-200, 301-400 (1-based) -> intron [200, 300); CDS 151-350
# - strand transcript t2: exons 1001-1100, 1201-1300 -> intron [1100, 1200)
GTF = """\
#!genome-build test
chrA\tt\tgene\t101\t400\t.\t+\t.\tgene_id "g1"; gene_biotype "protein_coding";
chrA\tt\ttranscript\t101\t400\t.\t+\t.\tgene_id "g1"; transcript_id "t1";
chrA\tt\texon\t101\t200\t.\t+\t.\tgene_id "g1"; transcript_id "t1"; exon_number "1";
chrA\tt\texon\t301\t400\t.\t+\t.\tgene_id "g1"; transcript_id "t1"; exon_number "2";
chrA\tt\tCDS\t151\t200\t.\t+\t0\tgene_id "g1"; transcript_id "t1";
chrA\tt\tCDS\t301\t350\t.\t+\t1\tgene_id "g1"; transcript_id "t1";
chrA\tt\tfive_prime_utr\t101\t150\t.\t+\t.\tgene_id "g1"; transcript_id "t1";
chrA\tt\tthree_prime_utr\t351\t400\t.\t+\t.\tgene_id "g1"; transcript_id "t1";
chrA\tt\tgene\t1001\t1300\t.\t-\t.\tgene_id "g2"; gene_type "lncRNA";
chrA\tt\texon\t1201\t1300\t.\t-\t.\tgene_id "g2"; transcript_id "t2";
chrA\tt\texon\t1001\t1100\t.\t-\t.\tgene_id "g2"; transcript_id "t2";
chrB\tt\tgene\t11\t60\t.\t-\t.\tgene_id "g3"; gene_biotype "protein_coding";
chrB\tt\texon\t11\t60\t.\t-\t.\tgene_id "g3"; transcript_id "t3";
chrB\tt\tCDS\t21\t60\t.\t-\t0\tgene_id "g3"; transcript_id "t3";
chrB\tt\tUTR\t11\t20\t.\t-\t.\tgene_id "g3"; transcript_id "t3";
"""

GFF3 = """\
##gff-version 3
chrA\tt\tgene\t101\t400\t.\t+\t.\tID=gene:g1;biotype=protein_coding
chrA\tt\tmRNA\t101\t400\t.\t+\t.\tID=transcript:t1;Parent=gene:g1
chrA\tt\texon\t101\t200\t.\t+\t.\tParent=transcript:t1
chrA\tt\texon\t301\t400\t.\t+\t.\tParent=transcript:t1
chrA\tt\tCDS\t151\t200\t.\t+\t0\tParent=transcript:t1
chrA\tt\tCDS\t301\t350\t.\t+\t1\tParent=transcript:t1
chrA\tt\tfive_prime_UTR\t101\t150\t.\t+\t.\tParent=transcript:t1
chrA\tt\tthree_prime_UTR\t351\t400\t.\t+\t.\tParent=transcript:t1
chrA\tt\tncRNA_gene\t1001\t1300\t.\t-\t.\tID=gene:g2;biotype=lncRNA
chrA\tt\tlnc_RNA\t1001\t1300\t.\t-\t.\tID=transcript:t2;Parent=gene:g2
chrA\tt\texon\t1201\t1300\t.\t-\t.\tParent=transcript:t2
chrA\tt\texon\t1001\t1100\t.\t-\t.\tParent=transcript:t2
chrB\tt\tgene\t11\t60\t.\t-\t.\tID=gene:g3;biotype=protein_coding
chrB\tt\tmRNA\t11\t60\t.\t-\t.\tID=transcript:t3;Parent=gene:g3
chrB\tt\texon\t11\t60\t.\t-\t.\tParent=transcript:t3
chrB\tt\tCDS\t21\t60\t.\t-\t0\tParent=transcript:t3
chrB\tt\tthree_prime_UTR\t11\t20\t.\t-\t.\tParent=transcript:t3
"""

FEATURES = ["protein_coding_gene", "lncRNA", "exon", "intron", "splice_donor", "splice_acceptor", "5UTR", "3UTR"]


def ivs(ann, feature, chrom):
    s, e = ann.intervals(feature, chrom)
    return list(zip(s.tolist(), e.tolist()))


def test_gtf_feature_definitions(tmp_path):
    p = tmp_path / "a.gtf"
    p.write_text(GTF)
    ann = read_annotation(p, FEATURES, LENGTHS)
    assert ivs(ann, "protein_coding_gene", "chrA") == [(100, 400)]
    assert ivs(ann, "protein_coding_gene", "chrB") == [(10, 60)]
    assert ivs(ann, "lncRNA", "chrA") == [(1000, 1300)]
    assert ivs(ann, "exon", "chrA") == [(100, 200), (300, 400), (1000, 1100), (1200, 1300)]
    assert ivs(ann, "intron", "chrA") == [(200, 300), (1100, 1200)]
    # + strand: donor = first 2 intron nt (GT), acceptor = last 2; - strand: mirrored in genome coordinates
    assert ivs(ann, "splice_donor", "chrA") == [(200, 202), (1198, 1200)]
    assert ivs(ann, "splice_acceptor", "chrA") == [(298, 300), (1100, 1102)]
    assert ivs(ann, "5UTR", "chrA") == [(100, 150)]
    assert ivs(ann, "3UTR", "chrA") == [(350, 400)]
    # GENCODE-style 'UTR' on the - strand below the CDS is the 3' UTR
    assert ivs(ann, "3UTR", "chrB") == [(10, 20)]
    assert ivs(ann, "5UTR", "chrB") == []
    t = ann.targets("chrA", 190, 310)
    assert t.shape == (120, len(FEATURES)) and t.dtype == np.uint8
    j = FEATURES.index("splice_donor")
    assert np.flatnonzero(t[:, j]).tolist() == [10, 11]
    j = FEATURES.index("intron")
    assert t[:, j].sum() == 100 and t[9, j] == 0 and t[10, j] == 1 and t[109, j] == 1 and t[110, j] == 0


def test_gff3_gives_the_same_targets(tmp_path):
    (tmp_path / "a.gtf").write_text(GTF)
    (tmp_path / "a.gff3").write_text(GFF3)
    a = read_annotation(tmp_path / "a.gtf", FEATURES, LENGTHS)
    b = read_annotation(tmp_path / "a.gff3", FEATURES, LENGTHS)
    for chrom, n in LENGTHS.items():
        assert np.array_equal(a.targets(chrom, 0, n), b.targets(chrom, 0, n)), chrom


def test_targets_match_brute_force_painting(tmp_path):
    rng = np.random.default_rng(0)
    lines, truth = [], np.zeros((2, 1000), dtype=np.uint8)
    for _ in range(200):
        f = int(rng.integers(2))
        s = int(rng.integers(0, 990))
        e = s + int(rng.integers(1, 40))
        e = min(e, 1000)
        truth[f, s:e] = 1
        lines.append(f"chrB\t{s}\t{e}\t{'AB'[f]}\n")
    (tmp_path / "f.bed").write_text("".join(lines))
    ann = read_annotation(tmp_path / "f.bed", ["B", "A"], LENGTHS)
    for a, b in [(0, 1000), (5, 17), (333, 999), (998, 1000)]:
        got = ann.targets("chrB", a, b)
        assert np.array_equal(got[:, 0], truth[1, a:b]) and np.array_equal(got[:, 1], truth[0, a:b])
    assert ann.targets("chrA", 0, 50).sum() == 0  # a contig without records


def test_sample_gtf_exons_and_genes_agree_with_bedtools(tmp_path, sample_dir):
    bedtools = need_tool("bedtools")
    gtf = sample_dir / "genes.gtf.gz"
    fa = IndexedFasta(sample_dir / "genome.fa.gz")
    ann = read_annotation(gtf, ["exon", "protein_coding_gene", "intron"], fa.lengths)
    for feature, rule in (("exon", lambda f: f[2] == "exon"),
                          ("protein_coding_gene", lambda f: f[2] == "gene" and 'gene_biotype "protein_coding"' in f[8])):
        bed = tmp_path / f"{feature}.bed"
        with gzip.open(gtf, "rt") as fh, open(bed, "w") as out:
            for line in fh:
                f = line.rstrip("\n").split("\t")
                if len(f) == 9 and rule(f):
                    out.write(f"{f[0]}\t{int(f[3]) - 1}\t{f[4]}\n")
        merged = subprocess.run(f"sort -k1,1 -k2,2n {bed} | {bedtools} merge -i -", shell=True, check=True,
                                capture_output=True, text=True).stdout.split("\n")
        want = sorted((f[0], int(f[1]), int(f[2])) for f in (ln.split("\t") for ln in merged if ln))
        got = sorted((c, s, e) for c in fa.lengths for s, e in ivs(ann, feature, c))
        assert got == want, feature
    # yeast introns: a few dozen, each between two exons of one transcript and never inside an exon of it
    assert 10 < sum(len(ivs(ann, "intron", c)) for c in fa.lengths) < 100


def test_absent_feature_is_a_clear_error(sample_dir):
    fa = IndexedFasta(sample_dir / "genome.fa.gz")
    with pytest.raises(InputError, match=r"feature '5UTR' is absent from the annotation.*features found: "
                                         r"protein_coding_gene, exon, intron"):
        read_annotation(sample_dir / "genes.gtf.gz", ["exon", "5UTR"], fa.lengths)


def test_contig_naming_mismatch_and_bad_coordinates(tmp_path):
    p = tmp_path / "a.gtf"
    p.write_text(GTF.replace("chrA\t", "A\t"))
    with pytest.raises(InputError, match=r"contig 'A' is not in the FASTA \(the FASTA has 'chrA'.*--chr-map"):
        read_annotation(p, ["exon"], LENGTHS)
    ann = read_annotation(p, ["exon"], LENGTHS, chr_map={"A": "chrA"})
    assert ivs(ann, "exon", "chrA")[0] == (100, 200)
    with pytest.raises(InputError, match=r"line 13: chrB:11-60 extends beyond the end of chrB"):
        read_annotation(tmp_path / "a.gtf", ["exon"], {"chrA": 2000, "chrB": 30}, chr_map={"A": "chrA"})
    bad = tmp_path / "b.gtf"
    bad.write_text("chrA\tt\texon\t10\n")
    with pytest.raises(InputError, match="line 1: expected 9 tab-separated GTF columns"):
        read_annotation(bad, ["exon"], LENGTHS)
    with pytest.raises(InputError, match="feature 'Z' is absent.*features found: A, B"):
        (tmp_path / "f.bed").write_text("chrA\t1\t5\tA\nchrA\t3\t9\tB\n")
        read_annotation(tmp_path / "f.bed", ["A", "Z"], LENGTHS)


def test_detect_format(tmp_path):
    (tmp_path / "x").write_text(GFF3)
    assert detect_format(tmp_path / "x") == "gff3"
    (tmp_path / "y").write_text(GTF)
    assert detect_format(tmp_path / "y") == "gtf"
    (tmp_path / "z").write_text("chrA\t1\t5\tA\n")
    assert detect_format(tmp_path / "z") == "bed"
    assert detect_format("genes.gtf.gz") == "gtf"
