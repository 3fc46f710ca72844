"""Unit tests of ntk/io/vcf.py: ALT classification, VcfReader (VCF/BCF, plain/bgzip/stdin, errors naming the file
and record) and VcfWriter (header kept, INFO added/replaced, bgzip + tabix, atomic, stdout). bcftools/bgzip/tabix
are the reference readers of what is written."""
from __future__ import annotations

import contextlib
import gzip
import os
import subprocess

import pytest
from conftest import need_tool

from ntk.errors import InputError, NtkError
from ntk.io.vcf import (STAR, SEQUENCE, SYMBOLIC, Allele, InfoField, VcfReader, VcfWriter, allele_kind,
                        output_mode, split_alts)

HEADER = ("##fileformat=VCFv4.2\n"
          "##contig=<ID=chr1,length=1000>\n"
          "##contig=<ID=chr2,length=500>\n"
          '##INFO=<ID=DP,Number=1,Type=Integer,Description="depth">\n'
          '##INFO=<ID=SCORE,Number=A,Type=Float,Description="old score">\n'
          '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
          "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\ts2\n")
RECORDS = ("chr1\t10\trs1\tA\tG\t50\tPASS\tDP=7\tGT\t0/1\t1/1\n"
           "chr1\t20\t.\tAC\tA,ACT,<DEL>\t.\t.\tSCORE=1,2,3\tGT\t1/2\t0/0\n"
           "chr1\t30\t.\tG\t*,G]chr2:5]\t.\t.\t.\tGT\t./.\t0/1\n"
           "chr2\t5\t.\tT\t.\t.\t.\tDP=1\tGT\t0/0\t0/0\n")


@pytest.fixture
def vcf(tmp_path):
    p = tmp_path / "in.vcf"
    p.write_text(HEADER + RECORDS)
    return p


# -- allele classification --------------------------------------------------------------------------------------
@pytest.mark.parametrize("alt,kind", [
    ("G", SEQUENCE), ("ACGT", SEQUENCE), ("acg", SEQUENCE), ("N", SEQUENCE),
    ("<DEL>", SYMBOLIC), ("<INS:ME:ALU>", SYMBOLIC), ("<*>", SYMBOLIC), ("<NON_REF>", SYMBOLIC),
    ("G]chr2:5]", SYMBOLIC), ("]chr2:5]G", SYMBOLIC), ("A[chr1:10[", SYMBOLIC), ("[chr1:10[A", SYMBOLIC),
    ("A.", SYMBOLIC), (".A", SYMBOLIC),  # single breakends
    ("*", STAR),
])
def test_allele_kind(alt, kind):
    assert allele_kind(alt) == kind


def test_split_alts_multiallelic_symbolic_star_and_missing(vcf):
    with VcfReader(vcf) as r:
        recs = list(r)
    assert split_alts(recs[0]) == [Allele(0, "A", "G", SEQUENCE)]
    assert split_alts(recs[1]) == [Allele(0, "AC", "A", SEQUENCE), Allele(1, "AC", "ACT", SEQUENCE),
                                   Allele(2, "AC", "<DEL>", SYMBOLIC)]  # index = the Number=A slot
    assert split_alts(recs[2]) == [Allele(0, "G", "*", STAR), Allele(1, "G", "G]chr2:5]", SYMBOLIC)]
    assert split_alts(recs[3]) == []  # ALT '.'


# -- VcfReader --------------------------------------------------------------------------------------------------
def _rows(reader):
    return [(r.chrom, r.pos, r.ref, r.alts) for r in reader]


WANT = [("chr1", 10, "A", ("G",)), ("chr1", 20, "AC", ("A", "ACT", "<DEL>")), ("chr1", 30, "G", ("*", "G]chr2:5]")),
        ("chr2", 5, "T", None)]


def test_reader_plain_bgzip_and_bcf_agree(vcf, tmp_path):
    with VcfReader(vcf) as r:
        assert r.contigs == ["chr1", "chr2"]
        assert r.samples == ["s1", "s2"]
        assert r.label == str(vcf)
        assert _rows(r) == WANT
        assert r.n_read == 4
    gz = tmp_path / "in.vcf.gz"
    subprocess.run(f"{need_tool('bgzip')} -c {vcf} > {gz}", shell=True, check=True)
    with VcfReader(gz) as r:
        assert _rows(r) == WANT
    bcf = tmp_path / "in.bcf"
    subprocess.run([need_tool("bcftools"), "view", "-Ob", "-o", str(bcf), str(vcf)], check=True,
                   capture_output=True)
    with VcfReader(bcf) as r:
        assert _rows(r) == WANT


@contextlib.contextmanager
def fd0_from(path):
    """File descriptor 0 reads ``path`` (htslib reads '-' from fd 0, not from sys.stdin)."""
    saved = os.dup(0)
    with open(path, "rb") as f:
        os.dup2(f.fileno(), 0)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_reader_stdin(vcf):
    with fd0_from(vcf), VcfReader("-") as r:
        assert r.label == "<stdin>"
        assert _rows(r) == WANT and r.n_read == 4


def test_reader_header_only_has_no_records(tmp_path):
    p = tmp_path / "h.vcf"
    p.write_text(HEADER)
    with VcfReader(p) as r:
        assert list(r) == [] and r.n_read == 0


def test_reader_refuses_missing_plain_gzip_and_non_vcf(tmp_path, vcf):
    with pytest.raises(InputError, match=rf"^{tmp_path / 'no.vcf'}: VCF file not found$"):
        VcfReader(tmp_path / "no.vcf")
    gz = tmp_path / "plain.vcf.gz"
    gz.write_bytes(gzip.compress(vcf.read_bytes()))
    with pytest.raises(InputError, match=rf"^{gz}: compressed with plain gzip, not bgzip-compressed: recompress "
                                         r"with `zcat .* \| bgzip > OUT\.vcf\.gz`"):
        VcfReader(gz)
    junk = tmp_path / "junk.vcf"
    junk.write_text("hello\nworld\n")
    with pytest.raises(InputError, match=rf"^{junk}: cannot read as VCF/BCF"):
        VcfReader(junk)
    empty = tmp_path / "empty.vcf"
    empty.write_text("")
    with pytest.raises(InputError, match=rf"^{empty}: cannot read as VCF/BCF"):
        VcfReader(empty)


@pytest.mark.parametrize("bad", ["chr1\tx\t.\tA\tG\t.\t.\t.\tGT\t0/0\t0/0\n",  # POS not a number
                                 "chr1\t30\n"])  # truncated line
def test_reader_bad_record_names_file_and_record_number(tmp_path, bad):
    p = tmp_path / "bad.vcf"
    p.write_text(HEADER + RECORDS.splitlines(keepends=True)[0] + bad)
    r = VcfReader(p)
    it = iter(r)
    assert next(it).pos == 10
    with pytest.raises(InputError, match=rf"^{p}: record 2: cannot parse"):
        next(it)


# -- output_mode ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,mode", [("-", "w"), ("out.vcf", "w"), ("out.vcf.gz", "wz"), ("out.vcf.bgz", "wz"),
                                       ("dir.x/out.vcf", "w")])
def test_output_mode(path, mode):
    assert output_mode(path) == mode


@pytest.mark.parametrize("path", ["out.bcf", "out.txt", "out.vcf.bz2", "out"])
def test_output_mode_refuses_other_names(path):
    with pytest.raises(NtkError, match=rf"^-o {path}: use a name ending in \.vcf\.gz"):
        output_mode(path)


# -- VcfWriter --------------------------------------------------------------------------------------------------
INFO = [InfoField("NTK_D", "A", "Float", 'a "quoted" score'), InfoField("SCORE", "A", "Float", "replaced")]


def _write(vcf, out, values=None, **kw):
    with VcfReader(vcf) as r, VcfWriter(str(out), r.header, INFO, ["##ntkVersion=0"], **kw) as w:
        for i, rec in enumerate(r):
            w.write(rec, values(i, rec) if values else None)
    return w


def _vals(i, rec):
    n = len(rec.alts or ())
    if i == 0:
        return {"NTK_D": (0.123456789,), "SCORE": (float("nan"),)}
    if i == 1:
        return {"NTK_D": (1e-7, None, -2.5), "SCORE": (1.0, 2.0, 3.0)}
    return {"NTK_D": None, "SCORE": (None,) * n if n else None}


def test_writer_plain_keeps_header_samples_and_records(vcf, tmp_path):
    out = tmp_path / "o" / "out.vcf"  # the parent is created
    w = _write(vcf, out, _vals)
    assert w.n_written == 4 and w.index_path is None
    text = out.read_text()
    head = [ln for ln in text.splitlines() if ln.startswith("#")]
    for line in HEADER.splitlines():
        assert line in head  # every input header line kept (incl. the old SCORE definition: same Number/Type)
    assert "##INFO=<ID=NTK_D,Number=A,Type=Float,Description=\"a 'quoted' score\">" in head
    assert "##ntkVersion=0" in head
    body = [ln.split("\t") for ln in text.splitlines() if not ln.startswith("#")]
    assert [b[7] for b in body] == ["DP=7;NTK_D=0.123457;SCORE=.",  # %g, 6 digits; NaN -> '.'; old SCORE replaced
                                    "NTK_D=1e-07,.,-2.5;SCORE=1,2,3",
                                    "SCORE=.,.",
                                    "DP=1"]
    assert [b[:7] + b[8:] for b in body] == [ln.split("\t")[:7] + ln.split("\t")[8:] for ln in RECORDS.splitlines()]
    # bcftools reads it back
    q = subprocess.run([need_tool("bcftools"), "query", "-f", "%POS\t%INFO/NTK_D\t[%GT,]\n", str(out)], check=True,
                       capture_output=True, text=True).stdout
    assert q.splitlines() == ["10\t0.123457\t0/1,1/1,", "20\t1e-07,.,-2.5\t1/2,0/0,", "30\t.\t./.,0/1,",
                              "5\t.\t0/0,0/0,"]


def test_writer_bgzip_with_tabix_index(vcf, tmp_path):
    out = tmp_path / "out.vcf.gz"
    w = _write(vcf, out, _vals)
    assert w.index_path == tmp_path / "out.vcf.gz.tbi" and w.index_path.is_file()
    with open(out, "rb") as f:
        assert f.read(4) == b"\x1f\x8b\x08\x04"  # BGZF
    region = subprocess.run([need_tool("tabix"), str(out), "chr1:15-25"], check=True, capture_output=True,
                            text=True).stdout
    assert [ln.split("\t")[1] for ln in region.splitlines()] == ["20"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.vcf", "out.vcf.gz", "out.vcf.gz.tbi"]


def test_writer_unsorted_bgzip_gets_no_index_and_no_stale_one(tmp_path):
    p = tmp_path / "unsorted.vcf"
    p.write_text(HEADER + "".join(reversed(RECORDS.splitlines(keepends=True))))
    out = tmp_path / "out.vcf.gz"
    (tmp_path / "out.vcf.gz.tbi").write_text("stale")
    with VcfReader(p) as r:
        w = VcfWriter(str(out), r.header, INFO, force=True)
        for rec in r:
            w.write(rec)
        assert w.close() is False
    assert w.index_path is None
    assert out.is_file() and not (tmp_path / "out.vcf.gz.tbi").exists()


def test_writer_zero_records_writes_the_header(vcf, tmp_path):
    out = tmp_path / "out.vcf"
    with VcfReader(vcf) as r, VcfWriter(str(out), r.header, INFO) as w:
        pass
    assert w.n_written == 0
    text = out.read_text()
    assert text.startswith("##fileformat=VCFv4.2") and text.splitlines()[-1].startswith("#CHROM")


def test_writer_refuses_existing_output_and_conflicting_info(vcf, tmp_path):
    out = tmp_path / "out.vcf"
    out.write_text("keep me")
    with VcfReader(vcf) as r:
        with pytest.raises(NtkError, match=rf"^{out}: already exists \(use --force to overwrite\)"):
            VcfWriter(str(out), r.header, INFO)
        assert out.read_text() == "keep me"
        with pytest.raises(InputError, match=r"already declares INFO/DP as Number=1,Type=Integer; ntk writes "
                                             r"Number=A,Type=Float .*bcftools annotate -x INFO/DP"):
            VcfWriter(str(tmp_path / "x.vcf"), r.header, [InfoField("DP", "A", "Float", "d")])


def test_writer_error_inside_with_leaves_nothing(vcf, tmp_path):
    out = tmp_path / "out.vcf.gz"
    with pytest.raises(RuntimeError, match="boom"):
        with VcfReader(vcf) as r, VcfWriter(str(out), r.header, INFO) as w:
            w.write(next(iter(r)))
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.vcf"]  # no output, no temp, no index


def test_writer_stdout(vcf, capsysbinary):
    with VcfReader(vcf) as r:
        w = VcfWriter("-", r.header, [InfoField("X", "A", "Float", "x")])
        assert capsysbinary.readouterr().out == b""  # the header goes out with the first record
        for rec in r:
            w.write(rec, {"X": (0.5,) * len(rec.alts or ())})
        assert w.close() is True
    out = capsysbinary.readouterr().out.decode()
    assert out.startswith("##fileformat=VCFv4.2\n")
    body = [ln for ln in out.splitlines() if not ln.startswith("#")]
    # the record without ALT gets an empty tuple: nothing is written for X (``X=`` would not be valid VCF)
    assert [ln.split("\t")[7] for ln in body] == ["DP=7;X=0.5", "SCORE=1,2,3;X=0.5,0.5,0.5", "X=0.5,0.5", "DP=1"]
