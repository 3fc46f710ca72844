"""Unit tests of ntk/io/fasta.py: sequence normalisation (lowercase, IUPAC -> N, invalid bytes), ACGT-run scanning,
the streaming reader (plain/gzip/bgzip/stdin, errors naming file, line and record) and IndexedFasta (plain, bgzip,
plain gzip, index building and index checks). samtools faidx is the reference for fetched sequence."""
from __future__ import annotations

import gzip
import io
import os
import random
import subprocess

import pytest
from conftest import need_tool

from ntk.errors import InputError
from ntk.io.fasta import IndexedFasta, acgt_runs, is_bgzip, is_gzip, iter_fasta, normalise_sequence

FASTA = (">chr1 first contig\n"
         "ACGTacgtNN\n"
         "RYKMswbdhv\n"
         "AC\n"
         ">chr2\n"
         "nnnnGGGG\n"
         ">empty\n"
         ">chr3\n"
         "T\n")
SEQS = {"chr1": "ACGTACGTNN" + "N" * 10 + "AC", "chr2": "NNNNGGGG", "empty": "", "chr3": "T"}


# -- normalise_sequence -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,want", [
    ("", ""), ("ACGTN", "ACGTN"), ("acgtn", "ACGTN"),
    ("RYSWKMBDHV", "N" * 10), ("ryswkmbdhv", "N" * 10),  # IUPAC ambiguity codes count as N
    (b"AcGt", "ACGT"),
])
def test_normalise_sequence(raw, want):
    assert normalise_sequence(raw) == want


@pytest.mark.parametrize("raw,shown,pos", [
    ("ACGU", "'U'", 4),  # RNA
    ("AC-GT", "'-'", 3),  # alignment gap
    ("A*", r"'\*'", 2),
    ("A C", "' '", 2),
    (b"AC\x00G", r"byte 0x00 \(not a nucleotide letter\)", 3),
    (b"ACG\xc3\xa9", r"byte 0xC3 \(not a nucleotide letter\)", 4),
    ("ACG\u2013T", "'\u2013'", 4),  # text (VCF alleles, chat questions): the character itself, not '?'
    ("ACGé", "'é'", 4),
])
def test_normalise_sequence_names_the_first_bad_character(raw, shown, pos):
    with pytest.raises(InputError, match=rf"^seq\.fa: contig x: invalid nucleotide {shown} at position "
                                         rf"{pos + 100}$"):
        normalise_sequence(raw, "seq.fa: contig x", offset=100)


# -- acgt_runs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seq,offset,min_length,want", [
    ("", 0, 1, []),
    ("NNNN", 0, 1, []),
    ("ACGT", 0, 1, [(0, 4)]),
    ("ACNNGTNA", 0, 1, [(0, 2), (4, 6), (7, 8)]),
    ("ACNNGTNA", 10, 1, [(10, 12), (14, 16), (17, 18)]),  # shifted by offset
    ("ACNNGTTTNA", 0, 3, [(4, 8)]),  # runs shorter than min_length dropped
    ("NNACGTNN", 0, 1, [(2, 6)]),
    ("acgt", 0, 1, []),  # input is expected uppercase (normalise_sequence first): lowercase is not ACGT
])
def test_acgt_runs(seq, offset, min_length, want):
    assert acgt_runs(seq, offset, min_length) == want


def test_acgt_runs_matches_a_plain_scan():
    rng = random.Random(3)
    seq = "".join(rng.choice("ACGTNNN") for _ in range(5000))
    want, i = [], 0
    while i < len(seq):
        if seq[i] == "N":
            i += 1
            continue
        j = i
        while j < len(seq) and seq[j] != "N":
            j += 1
        want.append((i + 7, j + 7))
        i = j
    assert acgt_runs(seq, 7) == want


# -- gzip magic -------------------------------------------------------------------------------------------------
def test_is_gzip_is_bgzip(tmp_path):
    plain = tmp_path / "a.fa"
    plain.write_text(FASTA)
    gz = tmp_path / "b.fa.gz"
    gz.write_bytes(gzip.compress(FASTA.encode()))
    bgz = tmp_path / "c.fa.gz"
    subprocess.run(f"{need_tool('bgzip')} -c {plain} > {bgz}", shell=True, check=True)
    assert (is_gzip(plain), is_bgzip(plain)) == (False, False)
    assert (is_gzip(gz), bool(is_bgzip(gz))) == (True, False)
    assert (is_gzip(bgz), bool(is_bgzip(bgz))) == (True, True)


# -- iter_fasta -------------------------------------------------------------------------------------------------
def _records(path):
    return {r.name: r.sequence for r in iter_fasta(path)}


def test_iter_fasta_plain_gzip_bgzip_crlf_comments(tmp_path):
    plain = tmp_path / "a.fa"
    plain.write_text(FASTA)
    recs = list(iter_fasta(plain))
    assert [(r.name, r.description, r.line) for r in recs] == [("chr1", "first contig", 1), ("chr2", "", 5),
                                                                ("empty", "", 7), ("chr3", "", 8)]
    assert {r.name: r.sequence for r in recs} == SEQS
    gz = tmp_path / "a.fa.gz"
    gz.write_bytes(gzip.compress(FASTA.encode()))
    assert _records(gz) == SEQS
    bgz = tmp_path / "b.fa.gz"
    subprocess.run(f"{need_tool('bgzip')} -c {plain} > {bgz}", shell=True, check=True)
    assert _records(bgz) == SEQS
    odd = tmp_path / "odd.fa"  # CRLF, blank lines, ';' comment lines, trailing blanks
    odd.write_bytes(b"; comment\r\n\r\n>x desc\r\nAC \r\n\r\n;mid\r\ngt\r\n")
    assert _records(odd) == {"x": "ACGT"}


def test_iter_fasta_stdin_plain_and_gzip(tmp_path, monkeypatch):
    for data in (FASTA.encode(), gzip.compress(FASTA.encode())):
        p = tmp_path / "in"
        p.write_bytes(data)
        with open(p, "rb") as raw:
            monkeypatch.setattr("sys.stdin", io.TextIOWrapper(raw))  # sys.stdin.buffer: a BufferedReader (peek)
            assert _records("-") == SEQS


@pytest.mark.parametrize("text,match", [
    ("", r"no FASTA records found"),
    ("\n\n; only a comment\n", r"no FASTA records found"),
    ("ACGT\n>x\nA\n", r"line 1: sequence before the first '>' header \(not FASTA\?\)"),
    (">x\nAC\n>\nA\n", r"line 3: FASTA header without a name"),
    (">x\nAC\n>y\nA\n>x\nG\n", r"line 5: duplicate record name 'x' \(first at line 1\); names must be unique"),
    (">x\nACGT\nAC-T\n", r"line 3 \(record x\): invalid nucleotide '-' at column 3$"),
    (">x\nACGU\n", r"line 2 \(record x\): invalid nucleotide 'U' at column 4$"),
])
def test_iter_fasta_errors_name_file_and_line(tmp_path, text, match):
    p = tmp_path / "bad.fa"
    p.write_text(text)
    with pytest.raises(InputError, match=rf"^{p}: {match}"):
        list(iter_fasta(p))


def test_iter_fasta_name_not_utf8_and_missing_and_corrupt_gzip(tmp_path):
    p = tmp_path / "bad.fa"
    p.write_bytes(b">ok\nA\n>caf\xe9\nA\n")
    with pytest.raises(InputError, match=rf"^{p}: line 3: record name b'caf\\xe9' is not valid UTF-8"):
        list(iter_fasta(p))
    with pytest.raises(InputError, match=rf"^{tmp_path / 'none.fa'}: file not found"):
        list(iter_fasta(tmp_path / "none.fa"))
    gz = tmp_path / "trunc.fa.gz"
    rng = random.Random(0)
    data = gzip.compress((">x\n" + "".join(rng.choice("ACGT") for _ in range(20000)) + "\n").encode())
    gz.write_bytes(data[:len(data) // 2])  # truncated
    with pytest.raises(InputError, match=rf"^{gz}: cannot read"):
        list(iter_fasta(gz))


# -- IndexedFasta -----------------------------------------------------------------------------------------------
def _genome(tmp_path, n=3, length=2500, width=60, seed=1) -> tuple:
    rng = random.Random(seed)
    seqs = {f"c{i}": "".join(rng.choice("ACGTacgtNNRY") for _ in range(length + 37 * i)) for i in range(n)}
    p = tmp_path / "g.fa"
    with open(p, "w") as f:
        for name, s in seqs.items():
            f.write(f">{name} desc\n" + "".join(s[i:i + width] + "\n" for i in range(0, len(s), width)))
    return p, seqs


def _upper(s: str) -> str:
    return normalise_sequence(s)


@pytest.mark.parametrize("kind", ["plain", "bgzip", "gzip"])
def test_indexed_fasta_fetch_matches_samtools(tmp_path, kind):
    samtools = need_tool("samtools")
    src, seqs = _genome(tmp_path)
    if kind == "bgzip":
        subprocess.run([need_tool("bgzip"), "-f", "-i", str(src)], check=True)  # g.fa.gz
        path = tmp_path / "g.fa.gz"
    elif kind == "gzip":
        path = tmp_path / "g.fa.gz"
        path.write_bytes(gzip.compress(src.read_bytes()))
        src.unlink()
    else:
        path = src
    with IndexedFasta(path) as fa:
        assert fa.names == ["c0", "c1", "c2"]
        assert fa.lengths == {k: len(v) for k, v in seqs.items()}
        assert "c1" in fa and "c9" not in fa
        if kind != "gzip":  # the index is built beside the FASTA (plain gzip: decompressed to a private temp)
            assert fa.fai_path == tmp_path / (path.name + ".fai") and fa.fai_path.is_file()
        if kind == "bgzip":
            assert (tmp_path / "g.fa.gz.gzi").is_file()
        rng = random.Random(5)
        for _ in range(30):
            name = rng.choice(fa.names)
            a = rng.randrange(0, fa.lengths[name])
            b = rng.randrange(a, fa.lengths[name] + 1)
            assert fa.fetch(name, a, b) == _upper(seqs[name][a:b])
        assert fa.fetch("c2") == _upper(seqs["c2"])
        assert fa.fetch("c0", 5, 5) == ""
        if kind != "gzip":
            want = subprocess.run([samtools, "faidx", str(path), "c1:101-260"], check=True, capture_output=True,
                                  text=True).stdout.split("\n", 1)[1].replace("\n", "")
            assert fa.fetch("c1", 100, 260) == _upper(want)


def test_indexed_fasta_fetch_errors(tmp_path):
    p = tmp_path / "g.fa"
    p.write_text(">a\nACGTACGTAC\n>b\nACG*T\n")
    with IndexedFasta(p) as fa:
        with pytest.raises(InputError, match=rf"^{p}: no contig 'zz'$"):
            fa.fetch("zz")
        with pytest.raises(InputError, match=rf"^{p}: a:6-11 is outside the contig \(length 10\)$"):
            fa.fetch("a", 5, 11)
        with pytest.raises(InputError, match=r"is outside the contig"):
            fa.fetch("a", -1, 3)
        with pytest.raises(InputError, match=r"is outside the contig"):
            fa.fetch("a", 6, 5)
        with pytest.raises(InputError, match=rf"^{p}: contig b: invalid nucleotide '\*' at position 4$"):
            fa.fetch("b")
        assert fa.fetch("b", 0, 3) == "ACG"  # only the fetched range is checked


def test_indexed_fasta_refuses_bad_inputs(tmp_path):
    with pytest.raises(InputError, match=r"stdin \('-'\) cannot be used as the reference"):
        IndexedFasta("-")
    with pytest.raises(InputError, match=rf"^{tmp_path / 'no.fa'}: FASTA file not found$"):
        IndexedFasta(tmp_path / "no.fa")
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    with pytest.raises(InputError, match=rf"^{empty}: FASTA file is empty"):
        IndexedFasta(empty)
    vcf = tmp_path / "x.fa"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\n")
    with pytest.raises(InputError, match=rf"^{vcf}: not a FASTA file \(a VCF file\): the first line starts with"):
        IndexedFasta(vcf)
    dup = tmp_path / "dup.fa"
    dup.write_text(">a\nACGT\n>b\nAC\n>a\nGG\n")
    with pytest.raises(InputError, match=rf"^{dup}: duplicate record name 'a'; names must be unique"):
        IndexedFasta(dup)
    noname = tmp_path / "noname.fa"
    noname.write_text(">a\nACGT\n>\nAC\n")
    with pytest.raises(InputError, match=rf"^{noname}: a '>' header without a name"):
        IndexedFasta(noname)


def test_indexed_fasta_refuses_a_stale_or_foreign_index(tmp_path):
    p = tmp_path / "g.fa"
    p.write_text(">a\nACGTACGT\nACGT\n>b\nGGGG\n")
    with IndexedFasta(p) as fa:
        assert fa.lengths == {"a": 12, "b": 4}
    fai = tmp_path / "g.fa.fai"
    # the file changes after indexing, the index keeps a newer mtime: refused, never read at wrong offsets
    p.write_text(">a\nACGTACGT\nACGT\n>b\nGGGG\n>c\nTTTT\n")
    os.utime(fai, (p.stat().st_mtime + 10, p.stat().st_mtime + 10))
    with pytest.raises(InputError, match=rf"^{fai} does not match {p} \(record 'c' is not in the index: the file "
                                         rf"changed after indexing\); delete {fai} \(ntk rebuilds the index\)"):
        IndexedFasta(p)
    # an index of another file
    other = tmp_path / "other.fa"
    other.write_text(">x\nAAAAAAAAAAAAAAAAAAAA\n")
    subprocess.run([need_tool("samtools"), "faidx", str(other)], check=True)
    os.replace(tmp_path / "other.fa.fai", fai)
    os.utime(fai, (p.stat().st_mtime + 10, p.stat().st_mtime + 10))
    with pytest.raises(InputError, match=rf"^{fai} does not match {p} \(no header '>x' before byte 3"):
        IndexedFasta(p)
    # an older index (mtime before the FASTA's) is rebuilt, not refused
    os.utime(fai, (p.stat().st_mtime - 10, p.stat().st_mtime - 10))
    with IndexedFasta(p) as fa:
        assert fa.lengths == {"a": 12, "b": 4, "c": 4}


def test_indexed_fasta_crlf_lines_and_records_without_sequence(tmp_path):
    crlf = tmp_path / "crlf.fa"
    crlf.write_bytes(b">a desc\r\nACGTAC\r\nGTnn\r\n>b\r\nacgt\r\n")
    with IndexedFasta(crlf) as fa:
        assert fa.lengths == {"a": 10, "b": 4}
        assert fa.fetch("a", 4, 9) == "ACGTN"  # across a CRLF line end
        assert fa.fetch("b") == "ACGT"
    emp = tmp_path / "emp.fa"
    emp.write_text(">a\nACGT\n>empty\n>b\nGG\n")
    with IndexedFasta(emp) as fa:  # htslib leaves a record without sequence out of the index: nothing to fetch
        assert fa.names == ["a", "b"] and fa.fetch("b") == "GG"
    assert {r.name: r.sequence for r in iter_fasta(emp)} == {"a": "ACGT", "empty": "", "b": "GG"}
