"""Unit tests of ntk/io/intervals.py: region strings (1-based inclusive) and BED (0-based half-open) to Interval,
--chr-map files, chr1-vs-1 naming checks, interval merging. Real files in tmp_path; bedtools as the reference for
merging where installed."""
from __future__ import annotations

import gzip
import subprocess

import pytest
from conftest import need_tool

from ntk.errors import InputError
from ntk.io.intervals import (Interval, check_contig_naming, merge_overlapping, parse_region, read_bed,
                              read_chr_map, suggest_contig)

LENGTHS = {"chr1": 1000, "chr2": 500, "chrM": 100, "HLA-A*01:01:01:01": 3000}


# -- Interval ---------------------------------------------------------------------------------------------------
def test_interval_length_and_region_string_round_trip():
    iv = Interval("chr1", 99, 200)
    assert iv.length == 101
    assert iv.region_string() == "chr1:100-200"
    assert parse_region(iv.region_string()) == Interval("chr1", 99, 200, name="chr1:100-200")


# -- parse_region -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("chr1:100-200", ("chr1", 99, 200)),  # 1-based inclusive -> 0-based half-open
    ("chr1:1-1", ("chr1", 0, 1)),  # one base
    ("chr1:5", ("chr1", 4, 5)),  # chr:pos is one position
    ("chr1:1,000-2,000", ("chr1", 999, 2000)),  # thousands separators
    ("  chr2:10-20 ", ("chr2", 9, 20)),  # surrounding blanks
    ("1:10-20", ("1", 9, 20)),  # Ensembl-style names are taken as written without a FASTA index
])
def test_parse_region_without_lengths(text, want):
    iv = parse_region(text)
    assert (iv.chrom, iv.start, iv.end) == want
    assert iv.name == text.strip()


def test_parse_region_whole_contig_and_contig_names_with_colons():
    assert parse_region("chr2", LENGTHS) == Interval("chr2", 0, 500, name="chr2")
    # a contig name that itself contains ':' (HLA alleles) is a whole-contig region when it is in the index
    assert parse_region("HLA-A*01:01:01:01", LENGTHS) == Interval("HLA-A*01:01:01:01", 0, 3000,
                                                                 name="HLA-A*01:01:01:01")
    assert parse_region("chr1:1-1000", LENGTHS) == Interval("chr1", 0, 1000, name="chr1:1-1000")


@pytest.mark.parametrize("text,lengths,match", [
    ("chr1:0-10", None, r"region 'chr1:0-10': start must be >= 1"),  # 0 is not a 1-based position
    ("chr1:20-10", None, r"end >= start"),
    ("chr1:10-", None, r"expected chr, chr:start-end or chr:pos"),
    ("chr1:a-b", None, r"expected chr, chr:start-end or chr:pos"),
    ("chr1 2", None, r"expected chr"),
    ("", None, r"expected chr"),
    ("chr1", None, r"whole-contig region needs the FASTA index"),
    ("chr1:1-1001", LENGTHS, r"end 1001 is beyond the end of chr1 \(length 1000\)"),
    ("chr9:1-10", LENGTHS, r"unknown contig 'chr9'"),
])
def test_parse_region_errors(text, lengths, match):
    with pytest.raises(InputError, match=match):
        parse_region(text, lengths)


def test_parse_region_suggests_the_other_naming_style():
    with pytest.raises(InputError, match=r"unknown contig '1' \(the FASTA has 'chr1'.*--chr-map"):
        parse_region("1:10-20", LENGTHS)
    with pytest.raises(InputError, match=r"unknown contig 'MT' \(the FASTA has 'chrM'"):
        parse_region("MT:1-5", LENGTHS)


# -- read_bed ---------------------------------------------------------------------------------------------------
BED = ("track name=x\n"
       "browser position chr1:1-100\n"
       "# a comment\n"
       "\n"
       "chr1\t0\t10\n"
       "chr1\t5\t20\tgeneA\t7\t-\textra1\textra2\n"
       "chr2\t100\t200\tgeneB\n")


def _want():
    return [Interval("chr1", 0, 10),
            Interval("chr1", 5, 20, name="geneA", strand="-", score="7", extra=("extra1", "extra2")),
            Interval("chr2", 100, 200, name="geneB")]


def test_read_bed_plain_skips_headers_and_keeps_columns(tmp_path):
    p = tmp_path / "a.bed"
    p.write_text(BED)
    assert list(read_bed(str(p))) == _want()
    assert list(read_bed(str(p), LENGTHS)) == _want()


def test_read_bed_gzip_bgzip_crlf_and_spaces(tmp_path):
    gz = tmp_path / "a.bed.gz"
    with gzip.open(gz, "wt") as f:
        f.write(BED)
    assert list(read_bed(str(gz))) == _want()
    plain = tmp_path / "b.bed"
    plain.write_text(BED)
    subprocess.run([need_tool("bgzip"), "-f", str(plain)], check=True)
    assert list(read_bed(str(plain) + ".gz")) == _want()
    crlf = tmp_path / "c.bed"
    crlf.write_bytes(BED.replace("\n", "\r\n").encode())
    assert list(read_bed(str(crlf))) == _want()
    spaces = tmp_path / "d.bed"
    spaces.write_text("chr1 0 10\nchr2  100  200  geneB\n")  # space-separated BED3/4 is accepted
    assert list(read_bed(str(spaces))) == [Interval("chr1", 0, 10), Interval("chr2", 100, 200, name="geneB")]


def test_read_bed_empty_file_and_stdin(tmp_path, monkeypatch):
    p = tmp_path / "empty.bed"
    p.write_text("")
    assert list(read_bed(str(p))) == []
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("chr1\t3\t4\n"))
    assert list(read_bed("-")) == [Interval("chr1", 3, 4)]


def test_read_bed_chr_map_renames_before_checking(tmp_path):
    p = tmp_path / "ens.bed"
    p.write_text("1\t0\t10\nMT\t0\t5\n")
    got = list(read_bed(str(p), LENGTHS, chr_map={"1": "chr1", "MT": "chrM"}))
    assert [(x.chrom, x.start, x.end) for x in got] == [("chr1", 0, 10), ("chrM", 0, 5)]


@pytest.mark.parametrize("line,match", [
    ("chr1\t10", r"line 2: expected at least 3 tab-separated columns"),
    ("chr1\tx\t10", r"line 2: start/end are not integers \('x', '10'\)"),
    ("chr1\t10\t10", r"line 2: invalid interval 10-10 \(BED is 0-based half-open"),  # empty interval
    ("chr1\t20\t10", r"line 2: invalid interval 20-10"),
    ("chr1\t-1\t10", r"line 2: invalid interval -1-10"),
    ("chr1\t0\t10\tn\t0\tx", r"line 2: strand must be \+, - or \. \(got 'x'\)"),
    ("chr9\t0\t10", r"line 2: unknown contig 'chr9'"),
    ("1\t0\t10", r"line 2: unknown contig '1' \(the FASTA has 'chr1'"),
    ("chr2\t400\t501", r"line 2: chr2:400-501 extends beyond the contig end \(500\)"),
])
def test_read_bed_errors_name_file_and_line(tmp_path, line, match):
    p = tmp_path / "bad.bed"
    p.write_text(f"chr1\t0\t5\n{line}\n")
    it = read_bed(str(p), LENGTHS)
    assert next(it) == Interval("chr1", 0, 5)  # records before the bad line come out (streaming)
    with pytest.raises(InputError, match=rf"^{p}: {match}"):
        next(it)


def test_read_bed_missing_file(tmp_path):
    with pytest.raises(InputError, match=rf"{tmp_path / 'nope.bed'}: file not found"):
        list(read_bed(str(tmp_path / "nope.bed")))


# -- read_chr_map -----------------------------------------------------------------------------------------------
def test_read_chr_map(tmp_path):
    assert read_chr_map(None) is None and read_chr_map("") is None
    p = tmp_path / "map.txt"
    p.write_text("# input\treference\n1\tchr1\n\nMT   chrM\n")
    assert read_chr_map(str(p)) == {"1": "chr1", "MT": "chrM"}
    p.write_text("1\tchr1\n2\n")
    with pytest.raises(InputError, match=rf"^{p}: line 2: expected two columns"):
        read_chr_map(str(p))
    with pytest.raises(InputError, match="file not found"):
        read_chr_map(str(tmp_path / "none.txt"))


# -- contig naming ----------------------------------------------------------------------------------------------
def test_suggest_contig():
    assert "'chr1'" in suggest_contig("1", LENGTHS)
    assert "'chrM'" in suggest_contig("M", LENGTHS)
    assert "'chrM'" in suggest_contig("MT", LENGTHS)
    assert suggest_contig("chr7", LENGTHS) == ""
    assert "'2'" in suggest_contig("chr2", {"2": 10})  # the other direction


def test_check_contig_naming():
    check_contig_naming(["chr1", "chr2", "chr1"], LENGTHS, "in.vcf")  # all present: no error
    check_contig_naming([], LENGTHS, "in.vcf")
    with pytest.raises(InputError, match=r"^in\.vcf: contig '1' is not in the FASTA \(the FASTA has 'chr1'"):
        check_contig_naming(["chr2", "1", "2"], LENGTHS, "in.vcf")
    with pytest.raises(InputError, match=r"^x\.bed: contig 'scaffold_9' is not in the FASTA \(FASTA contigs: "
                                         r"chr1, chr2, chrM"):
        check_contig_naming(["scaffold_9"], LENGTHS, "x.bed")


# -- merge_overlapping ------------------------------------------------------------------------------------------
def test_merge_overlapping_sorts_by_fasta_order_and_merges_adjacent():
    ivs = [Interval("chr2", 50, 60, name="d"), Interval("chr1", 30, 40, name="b"), Interval("chr1", 0, 10, name="a"),
           Interval("chr1", 10, 20, name="adj"), Interval("chr1", 35, 50, strand="-"),
           Interval("chrX", 0, 5, name="x"), Interval("chr1", 32, 38, name="inside")]
    got = merge_overlapping(ivs, ["chr1", "chr2"])
    assert got == [Interval("chr1", 0, 20, name="a"), Interval("chr1", 30, 50, name="b"),
                   Interval("chr2", 50, 60, name="d"), Interval("chrX", 0, 5, name="x")]  # unknown contigs last
    assert merge_overlapping([], ["chr1"]) == []


def test_merge_overlapping_agrees_with_bedtools(tmp_path):
    bedtools = need_tool("bedtools")
    import random
    rng = random.Random(7)
    ivs = []
    for _ in range(300):
        c = rng.choice(["chr1", "chr2"])
        s = rng.randrange(0, 5000)
        ivs.append(Interval(c, s, s + rng.randrange(1, 80)))
    p = tmp_path / "r.bed"
    p.write_text("".join(f"{x.chrom}\t{x.start}\t{x.end}\n" for x in sorted(ivs, key=lambda x: (x.chrom, x.start))))
    # bedtools merge -d 0 joins book-ended intervals too, like merge_overlapping
    out = subprocess.run([bedtools, "merge", "-i", str(p)], check=True, capture_output=True, text=True).stdout
    want = [tuple(line.split("\t")) for line in out.splitlines()]
    got = [(x.chrom, str(x.start), str(x.end)) for x in merge_overlapping(ivs, ["chr1", "chr2"])]
    assert got == want


def test_merge_overlapping_keeps_contigs_apart_when_they_are_not_in_the_order():
    """Contigs missing from ``order`` (or no order at all: load_regions(merge=True) without lengths) share one rank:
    they must still be sorted and merged contig by contig, not interleaved by start."""
    ivs = [Interval("chrX", 0, 10), Interval("chrY", 5, 15), Interval("chrX", 8, 20), Interval("chrY", 12, 30)]
    got = merge_overlapping(ivs, [])
    assert sorted((x.chrom, x.start, x.end) for x in got) == [("chrX", 0, 20), ("chrY", 5, 30)]
    assert len({x.chrom for x in got}) == len(got)  # one interval per contig here: nothing left unmerged
    assert [x.chrom for x in merge_overlapping(ivs, ["chrY"])] == ["chrY", "chrX"]  # known contigs first
