"""`ntk segment` command line: outputs on the real yeast sample, bedGraph on stdout, one-line errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyBigWig
import pysam
import pytest

from ntk.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden" / "segment_nt_tiny"
NT_V2 = ROOT / "tests" / "data" / "golden" / "nt_v2_tiny"
SAMPLE = ROOT / "data" / "sample" / "genome.fa.gz"


def ntk(monkeypatch, capsysbinary, *args: str) -> tuple[int, bytes, str]:
    monkeypatch.setattr(sys, "argv", ["ntk", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sample")
    dst = d / "genome.fa.gz"
    shutil.copy(SAMPLE, dst)  # the .fai/.gzi are built here, never in data/
    return dst


def test_segment_sample_regions(monkeypatch, capsysbinary, genome, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = ntk(monkeypatch, capsysbinary, "segment", genome, "-m", GOLDEN, "-o", out,
                            "-r", "I:1-5000", "-r", "III:10,001-12,000", "--features", "exon,splice_donor",
                            "--threshold", "0.55")
    assert code == 0, err
    assert stdout == b""  # data goes to files, logs to stderr
    assert "ntk segment" in err and "7,000 bp" in err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["exon.bw", "run.json", "segments.bed.gz", "segments.bed.gz.tbi", "splice_donor.bw"]
    fai = dict(ln.split("\t")[:2] for ln in Path(str(genome) + ".fai").read_text().splitlines())
    for f in ("exon", "splice_donor"):
        bw = pyBigWig.open(str(out / f"{f}.bw"))
        assert bw.chroms() == {k: int(v) for k, v in fai.items()}
        i = np.asarray(bw.values("I", 0, 6000))
        assert not np.isnan(i[:5000]).any() and np.isnan(i[5000:]).all()
        assert np.isnan(np.asarray(bw.values("VI", 0, 1000))).all()
        bw.close()
    info = json.loads((out / "run.json").read_text())
    assert info["bp_total"] == 7000 and info["options"]["features"] == ["exon", "splice_donor"]
    assert info["command"].startswith("ntk segment") and info["options"]["threshold"] == 0.55
    with pysam.TabixFile(str(out / "segments.bed.gz")) as tb:
        for row in tb.fetch("III", 10000, 12000):
            f = row.split("\t")
            assert f[3] in ("exon", "splice_donor") and float(f[7]) >= 0.55  # max (the mean may include a joined gap)


def test_bedgraph_on_stdout_equals_bigwig(monkeypatch, capsysbinary, genome, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = ntk(monkeypatch, capsysbinary, "segment", genome, "-m", GOLDEN, "-o", out,
                            "-r", "VI:2001-4000", "--bedgraph", "exon", "--bedgraph-precision", "full", "-q")
    assert code == 0, err
    assert err == ""  # --quiet: no bar, no summary
    rows = [ln.split("\t") for ln in stdout.decode().splitlines()]
    assert rows[0][0] == "VI" and int(rows[0][1]) == 2000 and int(rows[-1][2]) == 4000
    vals = np.concatenate([np.full(int(e) - int(s), float(v)) for _, s, e, v in rows])
    bw = pyBigWig.open(str(out / "exon.bw"))
    np.testing.assert_array_equal(vals.astype(np.float32), np.asarray(bw.values("VI", 2000, 4000), np.float32))
    bw.close()
    # bedGraph alone (no -o) writes no directory
    code, stdout2, err = ntk(monkeypatch, capsysbinary, "segment", genome, "-m", GOLDEN, "-r", "VI:2001-4000",
                             "--bedgraph", "exon", "--bedgraph-precision", "full", "-q")
    assert code == 0 and stdout2 == stdout


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ntk: error:"), err
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_input_one_line_error_and_no_output(monkeypatch, capsysbinary, genome, tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    bed = tmp_path / "r.bed"
    bed.write_text("I\t0\t100\nchrIII\t5\t50\n")
    cases = [
        (["-r", "chrI:1-100"], ["chrI", "--chr-map"]),
        (["-r", "I:1-999999999"], ["beyond the end"]),
        (["-R", bed], ["r.bed", "line 2", "chrIII"]),
        (["--features", "nope"], ["nope", "exon"]),
        (["--window", "100"], ["--window", "24"]),
        (["--bedgraph", "exon", "--features", "splice_donor"], ["--bedgraph"]),
    ]
    for extra, words in cases:
        code, _, err = ntk(monkeypatch, capsysbinary, "segment", genome, "-m", GOLDEN, "-o", out, *extra)
        one_line_error(code, err, *words)
        assert not out.exists()
    code, _, err = ntk(monkeypatch, capsysbinary, "segment", genome, "-m", NT_V2, "-o", out, "-r", "I:1-100")
    one_line_error(code, err, "segmentation head")
    assert not out.exists()
    code, _, err = ntk(monkeypatch, capsysbinary, "segment", genome, "-m", GOLDEN)
    one_line_error(code, err, "-o")
    # an existing non-empty output directory is kept unless --force
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = ntk(monkeypatch, capsysbinary, "segment", genome, "-m", GOLDEN, "-o", out, "-r", "I:1-100")
    one_line_error(code, err, "--force")
    assert (out / "keep.txt").exists()
    code, _, err = ntk(monkeypatch, capsysbinary, "segment", genome, "-m", GOLDEN, "-o", out, "-r", "I:1-100",
                       "--force", "-q")
    assert code == 0 and not (out / "keep.txt").exists() and (out / "exon.bw").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_console_entry_point_pipes(genome, tmp_path):
    exe = Path(sys.executable).parent / "ntk"
    if not exe.exists():
        pytest.skip("ntk console script not installed in this environment")
    p = subprocess.run(f"'{exe}' segment '{genome}' -m '{GOLDEN}' -r I:1-2000 --bedgraph splice_donor | head -3",
                       shell=True, capture_output=True, text=True, timeout=120)
    lines = p.stdout.splitlines()
    assert len(lines) == 3 and all(ln.startswith("I\t") for ln in lines)
    assert "error" not in p.stderr.lower()
    # errors from the real process: exactly one stderr line (nothing from htslib), exit 2, no output
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    for fasta, words in ((empty, ["empty.fa", "empty"]), (genome, ["segmentation head"])):
        model = GOLDEN if fasta == empty else NT_V2
        p = subprocess.run([str(exe), "segment", str(fasta), "-m", str(model), "-o", str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=120)
        one_line_error(p.returncode, p.stderr, *words)
        assert p.stdout == "" and not (tmp_path / "out").exists()


def test_bedgraph_precision_rounds_and_merges_equal_neighbours(monkeypatch, capsysbinary, genome, tmp_path):
    """Default: 3 decimals, neighbours with equal rounded values on one line (also across chunks)."""
    code, full, err = ntk(monkeypatch, capsysbinary, "segment", genome, "-m", GOLDEN, "-r", "VI:2001-9000",
                          "--bedgraph", "exon", "--bedgraph-precision", "full", "-q")
    assert code == 0, err
    exact = np.concatenate([np.full(int(e) - int(s), np.float32(v)) for _, s, e, v in
                            (ln.split("\t") for ln in full.decode().splitlines())])
    for digits in (None, 1):
        args = [] if digits is None else ["--bedgraph-precision", str(digits)]
        code, out, err = ntk(monkeypatch, capsysbinary, "segment", genome, "-m", GOLDEN, "-r", "VI:2001-9000",
                             "--bedgraph", "exon", *args, "-q")
        assert code == 0, err
        d = 3 if digits is None else digits
        rows = [ln.split("\t") for ln in out.decode().splitlines()]
        assert all(len(v.split(".")[1]) == d for *_, v in rows), rows[:3]
        starts, ends = np.array([int(r[1]) for r in rows]), np.array([int(r[2]) for r in rows])
        vals = np.array([float(r[3]) for r in rows])
        assert starts[0] == 2000 and ends[-1] == 9000 and (starts[1:] == ends[:-1]).all()  # one contiguous region
        assert (vals[1:] != vals[:-1]).all()  # equal rounded neighbours merged
        np.testing.assert_array_equal(np.repeat(vals, ends - starts), np.round(exact.astype(np.float64), d))
        assert len(rows) < len(full.decode().splitlines())
    code, _, err = ntk(monkeypatch, capsysbinary, "segment", genome, "-m", GOLDEN, "-r", "VI:2001-3000",
                       "--bedgraph", "exon", "--bedgraph-precision", "12")
    assert code == 2 and "--bedgraph-precision" in err
