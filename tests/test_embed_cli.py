"""`ntk embed` end to end: regions of the yeast sample (strand from BED, checked against samtools), FASTA
files and stdin, Parquet metadata, npy output, and one-line errors that leave no output behind."""
import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

import ntk
from ntk.cli.main import main
from ntk.io.tables import read_parquet_metadata
from ntk.pipelines.embed import embed_sequences

from conftest import assert_f32_close, need_tool, run_ntk



@pytest.fixture(scope="module")
def genome(tmp_path_factory, sample_dir):
    """The sample genome copied out of data/ (indexes get built next to it)."""
    d = tmp_path_factory.mktemp("genome")
    shutil.copy(sample_dir / "genome.fa.gz", d / "genome.fa.gz")
    return d / "genome.fa.gz"


@pytest.fixture(scope="module")
def v2_dir(golden_dir):
    return golden_dir / "nt_v2_tiny"


@pytest.fixture(scope="module")
def v2(v2_dir):
    return ntk.load_model(v2_dir)


def cli(monkeypatch, capsys, *args):
    """Run the real CLI entry point in-process; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["ntk", *map(str, args)])
    try:
        main()
        rc = 0
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def samtools_seq(genome, region, rc=False):
    out = subprocess.run([need_tool("samtools"), "faidx", str(genome), region] + (["-i"] if rc else []),
                         capture_output=True, text=True, check=True).stdout
    return "".join(out.splitlines()[1:]).upper()


def emb(df, col="embedding"):
    return np.array(df[col].to_list(), dtype=np.float64)


def test_regions_strand_order_and_metadata(tmp_path, monkeypatch, capsys, genome, v2, v2_dir):
    bed = tmp_path / "r.bed"
    # not sorted on purpose: output order must be input order (-r regions first, then the BED)
    bed.write_text("III\t5000\t5800\tprom_minus\t0\t-\n"
                   "I\t1000\t1600\tprom_plus\t0\t+\n"
                   "VI\t100\t200\n"
                   "III\t10000\t12000\tlong_minus\t0\t-\n")
    out = tmp_path / "e.parquet"
    rc, err = cli(monkeypatch, capsys, "embed", genome, "-r", "I:2001-2400", "-R", bed, "-m", v2_dir, "-o", out)
    assert rc == 0, err
    assert "5 records" in err
    df = pl.read_parquet(out)
    assert df["name"].to_list() == ["I:2001-2400", "prom_minus", "prom_plus", "VI:101-200", "long_minus"]
    assert df["strand"].to_list() == [".", "-", "+", ".", "-"]
    assert df["start"].to_list() == [2000, 5000, 1000, 100, 10000]
    assert df["length"].to_list() == [400, 800, 600, 100, 2000]
    assert df.schema["embedding"] == pl.List(pl.Float32)
    seqs = [samtools_seq(genome, "I:2001-2400"), samtools_seq(genome, "III:5001-5800", rc=True),
            samtools_seq(genome, "I:1001-1600"), samtools_seq(genome, "VI:101-200"),
            samtools_seq(genome, "III:10001-12000", rc=True)]
    want = emb(embed_sequences(v2, seqs, batch_size=1))
    assert_f32_close(emb(df), want, what="regions vs sequences")
    # the minus-strand row is not the plus-strand embedding
    plus = emb(embed_sequences(v2, [samtools_seq(genome, "III:5001-5800")]))[0]
    assert np.abs(emb(df)[1] - plus).max() > 1e-3
    md = read_parquet_metadata(out)
    assert md["model"] == str(v2_dir) and md["layers"] == "3" and md["pooling"] == "mean"
    assert md["ntk_version"] == ntk.__version__ and md["embedding_dim"] == "32"
    assert md["precision"].split()[0] in ("fp32", "bf16")  # the compute precision it ran in, and why


def test_fasta_file_stdin_and_npy(tmp_path, monkeypatch, capsys, v2_dir):
    fa = tmp_path / "s.fa"
    fa.write_text(">a first\nACGTACGGGTACCA\nacgtnnnacg\n>empty\n>allN\nNNNNNN\n>b\n" + "ACGTTGCA" * 90 + "\n")
    out = tmp_path / "f.parquet"
    rc, err = cli(monkeypatch, capsys, "embed", fa, "-m", v2_dir, "-o", out, "--layer", "-1", "--layer", "1",
                  "--pool", "max")
    assert rc == 0, err
    df = pl.read_parquet(out)
    assert df["name"].to_list() == ["a", "empty", "allN", "b"]
    assert df["status"].to_list() == ["ok", "empty", "all_n", "ok"]
    assert df.columns[-2:] == ["embedding_layer3", "embedding_layer1"]
    # stdin gives the same table (a real subprocess, the way a pipeline uses it)
    out2 = tmp_path / "stdin.parquet"
    p = run_ntk("embed", "-", "-m", v2_dir, "-o", out2, "--layer", "-1,1", "--pool", "max", "-q",
                input=fa.read_text())
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert pl.read_parquet(out2).equals(df)
    # npy: the same numbers, NaN rows where there is no embedding, row table beside it
    npy = tmp_path / "f.npy"
    rc, err = cli(monkeypatch, capsys, "embed", fa, "-m", v2_dir, "-o", npy, "--format", "npy", "--layer", "-1",
                  "--layer", "1", "--pool", "max")
    assert rc == 0, err
    mat = np.load(npy)
    assert mat.shape == (4, 2, 32) and mat.dtype == np.float32
    assert np.isnan(mat[1:3]).all()
    assert np.array_equal(mat[[0, 3], 0], emb(df.filter(pl.col("status") == "ok"), "embedding_layer3"))
    rows = pl.read_csv(tmp_path / "f.rows.tsv", separator="\t")
    assert rows["name"].to_list() == ["a", "empty", "allN", "b"]


def test_pool_none_rows(tmp_path, monkeypatch, capsys, v2_dir):
    fa = tmp_path / "s.fa"
    fa.write_text(">x\nACGTACGTNACG\n")
    out = tmp_path / "t.parquet"
    rc, err = cli(monkeypatch, capsys, "embed", fa, "-m", v2_dir, "-o", out, "--pool", "none")
    assert rc == 0, err
    df = pl.read_parquet(out)
    assert df["token_index"].to_list() == [0, 1, 2, 3, 4, 5, 6]
    assert list(zip(df["nt_start"], df["nt_end"])) == [(0, 6), (6, 7), (7, 8), (8, 9), (9, 10), (10, 11), (11, 12)]


def test_chr_map(tmp_path, monkeypatch, capsys, genome, v2_dir):
    bed = tmp_path / "r.bed"
    bed.write_text("chrI\t1000\t1600\n")
    out = tmp_path / "o.parquet"
    rc, err = cli(monkeypatch, capsys, "embed", "-R", bed, "--reference", genome, "-m", v2_dir, "-o", out)
    assert rc == 2 and "--chr-map" in err and "'chrI'" in err
    assert not out.exists()
    cmap = tmp_path / "map.txt"
    cmap.write_text("chrI\tI\n")
    rc, err = cli(monkeypatch, capsys, "embed", "-R", bed, "--reference", genome, "--chr-map", cmap, "-m", v2_dir,
                  "-o", out)
    assert rc == 0, err
    assert pl.read_parquet(out)["chrom"].to_list() == ["I"]


def _bad_inputs(tmp_path, genome):
    bed_oob = tmp_path / "oob.bed"
    bed_oob.write_text("I\t100\t200\nI\t230000\t230300\n")
    bed_unknown = tmp_path / "unk.bed"
    bed_unknown.write_text("I\t100\t200\nXVII\t1\t50\n")
    garbage = tmp_path / "garbage.fa"
    garbage.write_bytes(b"\x00\x01binary\xff\xfe not a fasta\n")
    late_bad = tmp_path / "late.fa"
    late_bad.write_text(">ok1\nACGTACGTAC\n>ok2\nACGT\n>bad\nACGTXACGT\n")
    return [
        (["-R", bed_oob, "--reference", genome], "beyond the contig end"),
        (["-R", bed_unknown, "--reference", genome], "unknown contig 'XVII'"),
        (["-r", "I:1-999999999", "--reference", genome], "beyond the end of I"),
        ([tmp_path / "missing.fa"], "not found"),
        ([garbage], "garbage.fa"),
        ([late_bad], "invalid nucleotide 'X'"),
        ([late_bad, "--layer", "9"], "--layer 9"),
        ([late_bad, "--pool", "none", "--rc-average"], "--rc-average"),
        ([late_bad, "--pool", "median"], "--pool"),
    ]


def test_errors_are_one_line_and_leave_nothing(tmp_path, monkeypatch, capsys, genome, v2_dir):
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "e.parquet"
    for args, msg in _bad_inputs(tmp_path, genome):
        rc, err = cli(monkeypatch, capsys, "embed", *args, "-m", v2_dir, "-o", out)
        assert rc == 2, (args, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ntk: error:") and msg in lines[0], (args, err)
        assert list(outdir.iterdir()) == [], (args, list(outdir.iterdir()))
    # an existing output is kept unless --force
    out.write_text("keep me")
    rc, err = cli(monkeypatch, capsys, "embed", tmp_path / "late.fa", "-m", v2_dir, "-o", out)
    assert rc == 2 and "--force" in err and out.read_text() == "keep me"


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_failure_after_rows_were_written_leaves_nothing(tmp_path, v2, fmt):
    """Rows already streamed to temp parts when a later record fails: no output, no temp files."""
    from ntk.errors import InputError
    from ntk.pipelines.embed import write_embeddings

    def records():
        for i in range(5):
            yield (f"s{i}", "ACGTTGCAAC" * (i + 1))
        raise InputError("record 6 is broken")

    out = tmp_path / f"e.{fmt}"
    with pytest.raises(InputError):
        write_embeddings(v2, records(), out, fmt=fmt, chunk_tokens=1)
    assert list(tmp_path.iterdir()) == []
    # and the same stream without the failure writes all five rows, one chunk at a time
    n = write_embeddings(v2, (r for i, r in zip(range(5), records())), out, fmt=fmt, chunk_tokens=1).rows
    assert n == 5 and out.exists()
