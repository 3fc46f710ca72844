"""The one ACGT-run scanner (io/fasta.scan_acgt_runs) and the one region loader (io/intervals.load_regions /
iter_regions) that segment, score-variants, embed, chat and finetune segment share."""
from __future__ import annotations

import random
import re

import pytest

from ntk.errors import InputError
from ntk.io.fasta import IndexedFasta, scan_acgt_runs
from ntk.io.intervals import iter_regions, load_regions


def python_runs(seq: str, lo: int, min_length: int) -> list[tuple[int, int]]:
    return [(m.start() + lo, m.end() + lo) for m in re.finditer(r"[ACGT]+", seq) if m.end() - m.start() >= min_length]


@pytest.fixture
def genome(tmp_path):
    rng = random.Random(7)
    seqs = {}
    for name, n in (("a", 5000), ("b", 777)):
        s = list(rng.choices("ACGT", k=n))
        for _ in range(25):  # N stretches of 1-40 nt, some at block boundaries below
            p = rng.randrange(n)
            s[p:p + rng.randint(1, 40)] = "N" * len(s[p:p + rng.randint(1, 40)])
        seqs[name] = "".join(s)[:n]
    seqs["a"] = seqs["a"][:1020] + "NNNN" + seqs["a"][1024:]  # a gap ending exactly on a 1024 block boundary
    path = tmp_path / "g.fa"
    path.write_text("".join(f">{k}\n" + "\n".join(v[i:i + 60] for i in range(0, len(v), 60)) + "\n"
                            for k, v in seqs.items()))
    return IndexedFasta(path), seqs


@pytest.mark.parametrize("block", [64, 1000, 1024, 1 << 22])
def test_scanner_finds_the_same_runs_whatever_the_block(genome, block):
    fa, seqs = genome
    for name, s in seqs.items():
        for lo, hi, k in ((0, len(s), 1), (0, len(s), 24), (100, min(len(s), 3100), 7)):
            got = list(scan_acgt_runs(fa, name, lo, hi, min_length=k, block=block))
            assert got == python_runs(s[lo:hi], lo, k), (name, lo, hi, k, block)
    assert list(scan_acgt_runs(fa, "b", 10, 10)) == []


def test_load_regions_parses_validates_merges_and_refuses_an_empty_bed(genome, tmp_path):
    fa, _ = genome
    bed = tmp_path / "r.bed"
    bed.write_text("b\t10\t20\tx\na\t100\t200\ta\t150\t300\n".replace("\ta\t150", "\na\t150"))
    got = load_regions(["a:1-50", "b:5-12"], str(bed), fa.lengths)
    assert [(i.chrom, i.start, i.end) for i in got] == [("a", 0, 50), ("b", 4, 12), ("b", 10, 20), ("a", 100, 200),
                                                         ("a", 150, 300)]
    merged = load_regions(["a:1-50", "b:5-12"], str(bed), fa.lengths, merge=True)
    assert [(i.chrom, i.start, i.end) for i in merged] == [("a", 0, 50), ("a", 100, 300), ("b", 4, 20)]
    empty = tmp_path / "e.bed"
    empty.write_text("# nothing\n")
    with pytest.raises(InputError, match="e.bed: no regions in the file"):
        load_regions(["a:1-5"], str(empty), fa.lengths)
    assert [(i.chrom, i.start, i.end) for i in iter_regions(["a:1-5"], str(empty), fa.lengths)] == [("a", 0, 5)]
    with pytest.raises(InputError, match="zz"):
        iter_regions(["a:1-5", "zz:1-5"], str(bed), fa.lengths)  # -r strings fail at once, before the BED is read
    assert load_regions((), None, fa.lengths) == []
