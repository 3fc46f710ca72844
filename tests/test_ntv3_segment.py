"""ntk segment / ntk tracks with NTv3 post-trained models (the golden tiny model: window unit 8, centre 0.375):
outputs equal the model's own output on each window's kept centre, every ACGT position gets exactly one value
and N none, species errors, shards merged == one run, --resume after SIGKILL."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyBigWig
import pytest
import torch

import ntk
from ntk.errors import NtkError
from ntk.pipelines.family import NTv3Family
from ntk.pipelines.merge import merge_parts
from ntk.pipelines.segment import segment_genome
from ntk.pipelines.tracks import tracks_genome

from conftest import run_ntk

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
POST = ROOT / "tests" / "data" / "golden" / "ntv3_post_tiny"
PRE = ROOT / "tests" / "data" / "golden" / "ntv3_pre_tiny"
NTK = Path(sys.executable).parent / "ntk"
ID = {"A": 6, "T": 7, "C": 8, "G": 9, "N": 10}


@pytest.fixture(scope="module")
def model():
    return ntk.load_model(POST)


def dna(rng, n):
    return "".join(rng.choice(list("ACGT"), n))


def bw_values(path, chrom, n):
    with pyBigWig.open(str(path)) as bw:
        return np.asarray(bw.values(chrom, 0, n), dtype=np.float64)


def direct(model, seq, species, start, W):
    """The model's own outputs for the window [start, start + W) of ``seq`` (N outside the sequence)."""
    win = "".join(seq[p] if 0 <= p < len(seq) else "N" for p in range(start, start + W))
    with torch.inference_mode():
        out = model(torch.tensor([[ID[c] for c in win]]), species_ids=model.species_id(species))
    return out


def test_single_window_equals_model_output(tmp_path, model):
    rng = np.random.default_rng(0)
    seq = dna(rng, 24)
    fa = tmp_path / "g.fa"
    fa.write_text(">c\n" + seq + "\n")
    # a 24-nt contig with --window 64: one window [-20, 44), N outside the contig; its centre (int(64*0.375)=24
    # positions from (64-24)//2 = 20) is exactly the contig
    seg = segment_genome(fa, tmp_path / "seg", model=model, species="human", window=64)
    assert seg.n_windows == 1 and seg.bp_scored == 24
    out = direct(model, seq, "human", -20, 64)
    assert out.crop == (20, 44)
    probs = out.bed_probabilities[0].numpy()
    for k, f in enumerate(model.features):
        np.testing.assert_allclose(bw_values(tmp_path / "seg" / f"{f}.bw", "c", 24), probs[:, k], rtol=1e-6,
                                   atol=1e-7)
    tr = tracks_genome(fa, tmp_path / "tr", model=model, species="human", window=64)
    assert tr.features == ["h_track1", "h_track2", "h_track3"]
    bw = out.bigwig_tracks_logits[0].numpy()
    for k, t in enumerate(tr.features):
        np.testing.assert_allclose(bw_values(tmp_path / "tr" / f"{t}.bw", "c", 24), bw[:, k], rtol=1e-6, atol=1e-7)
    assert not (tmp_path / "tr" / "segments.bed.gz").exists()
    info = json.loads((tmp_path / "tr" / "run.json").read_text())
    assert info["model"]["tracks"]["ids"] == tr.features and info["model"]["species"] == "human"
    assert info["outputs"] == ["h_track1.bw", "h_track2.bw", "h_track3.bw", "run.json"]


def test_multi_window_contig_with_n_runs(tmp_path, model):
    rng = np.random.default_rng(1)
    # N gaps of 5 and 40 nt (shorter than a window's kept centre, 96 nt: inside one span, fed as N) and of 200 nt
    # (splits spans); the contig ends are covered through N padding
    seq = dna(rng, 150) + "N" * 5 + dna(rng, 200) + "N" * 40 + dna(rng, 100) + "N" * 200 + dna(rng, 77)
    fa = tmp_path / "g.fa"
    fa.write_text(">c\n" + seq + "\n>d\n" + dna(rng, 10) + "\n")
    W = 256
    fam = NTv3Family(model)
    mg, K = fam.margin(W), fam.kept(W)
    assert (mg, K) == (80, 96)
    res = tracks_genome(fa, tmp_path / "o", model=model, species="mouse", window=W, tracks="m_track2")
    acgt = np.array([c != "N" for c in seq])
    vals = bw_values(tmp_path / "o" / "m_track2.bw", "c", len(seq))
    assert np.isnan(vals[~acgt]).all() and not np.isnan(vals[acgt]).any()  # every ACGT once, N never
    assert res.bp_scored == acgt.sum() + 10
    # the documented tiling: a span [s, e) gets windows starting at s - margin + k*K, each keeping [s + kK, +K)
    span_s, span_e = 0, 150 + 5 + 200 + 40 + 100
    for k in range(-(-(span_e - span_s) // K)):
        a = span_s + k * K
        out = direct(model, seq, "mouse", a - mg, W)
        want = out.bigwig_tracks_logits[0, mg - out.crop[0]: mg - out.crop[0] + K, 1].numpy()
        got = vals[a: a + K]
        ok = acgt[a: a + K]
        np.testing.assert_allclose(got[ok], want[: len(got)][ok], rtol=1e-5, atol=1e-6)
    # the last span (77 nt) is shorter than a 256-nt window's centre: the shortest window that holds it
    W2 = fam.fit_window(77, W)
    assert W2 < W and fam.kept(W2) >= 77
    s = len(seq) - 77
    out = direct(model, seq, "mouse", s - fam.margin(W2), W2)
    o = fam.margin(W2) - out.crop[0]
    np.testing.assert_allclose(vals[s:], out.bigwig_tracks_logits[0, o: o + 77, 1].numpy(), rtol=1e-5, atol=1e-6)
    # --rc-average: the mean of the forward output and the flipped output for the reverse complement
    res2 = tracks_genome(fa, tmp_path / "rc", model=model, species="mouse", window=W, tracks=["m_track2"],
                         regions=["d:1-10"], rc_average=True)
    d = fa.read_text().split(">d\n")[1].strip()
    W3 = NTv3Family(model).fit_window(10, W)
    m3 = NTv3Family(model).margin(W3)
    fwd = direct(model, d, "mouse", -m3, W3)
    comp = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
    rcseq = "".join(comp[c] for c in reversed(d))
    rev = direct(model, rcseq, "mouse", -(W3 - m3 - 10), W3)
    f = fwd.bigwig_tracks_logits[0, :, 1].numpy()
    r = rev.bigwig_tracks_logits[0, :, 1].numpy()[::-1]  # forward coordinates [W - e, W - s)
    s0, e0 = fwd.crop
    want = (f[m3 - s0: m3 - s0 + 10] + r[m3 - (W3 - e0): m3 - (W3 - e0) + 10]) / 2
    np.testing.assert_allclose(bw_values(tmp_path / "rc" / "m_track2.bw", "d", 10), want, rtol=1e-5, atol=1e-6)
    assert res2.bp_scored == 10


def test_species_and_model_errors(tmp_path, model):
    fa = tmp_path / "g.fa"
    fa.write_text(">c\n" + "ACGT" * 20 + "\n")
    out = tmp_path / "o"
    # the CLI: one line, exit 2, the choices listed, nothing written
    p = run_ntk("segment", fa, "-m", POST, "-o", out, "--window", "64")
    assert p.returncode == 2 and "--species is required" in p.stderr and "human, mouse, arabidopsis" in p.stderr
    p = run_ntk("tracks", fa, "-m", POST, "-o", out, "--species", "zebrafish")
    assert p.returncode == 2 and "'zebrafish'" in p.stderr and "human, mouse, arabidopsis" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    # the same checks through the Python API
    with pytest.raises(NtkError, match="no BigWig tracks.*human, mouse"):
        tracks_genome(fa, out, model=model, species="arabidopsis", window=64)
    with pytest.raises(NtkError, match="'m_track1'.*h_track1, h_track2, h_track3"):
        tracks_genome(fa, out, model=model, species="human", tracks="h_track1,m_track1", window=64)
    with pytest.raises(NtkError, match="pre-trained"):
        segment_genome(fa, out, model=ntk.load_model(PRE), species="human", window=64)
    with pytest.raises(NtkError, match="multiple of 8"):
        segment_genome(fa, out, model=model, species="human", window=60)
    with pytest.raises(NtkError, match="--crop"):
        segment_genome(fa, out, model=model, species="human", window=64, crop=10)
    with pytest.raises(NtkError, match="only NTv3 post-trained"):
        segment_genome(fa, out, model=ntk.load_model(ROOT / "tests" / "data" / "golden" / "segment_nt_tiny"),
                       species="human")
    assert not out.exists()


def test_tracks_file_and_cli_run(tmp_path):
    rng = np.random.default_rng(3)
    fa = tmp_path / "g.fa"
    fa.write_text(">c\n" + dna(rng, 300) + "\n")
    ids = tmp_path / "ids.txt"
    ids.write_text("# selected\nh_track3\n\nh_track1\n")
    p = run_ntk("tracks", fa, "-m", POST, "--species", "human", "--tracks", ids, "-o", tmp_path / "o", "--window",
                "128", "-q", check=True)
    assert p.stderr == ""
    assert sorted(x.name for x in (tmp_path / "o").iterdir()) == ["h_track1.bw", "h_track3.bw", "run.json"]
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    assert info["options"]["features"] == ["h_track3", "h_track1"] and info["options"]["species"] == "human"


def _same_outputs(a: Path, b: Path, names, chroms):
    for f in names:
        for c, n in chroms:
            np.testing.assert_array_equal(bw_values(a / f"{f}.bw", c, n), bw_values(b / f"{f}.bw", c, n))


@pytest.mark.parametrize("head", ["segment", "tracks"])
def test_shards_merged_equal_one_run(tmp_path, model, head):
    rng = np.random.default_rng(4)
    seqs = {"a": dna(rng, 700) + "N" * 300 + dna(rng, 500), "b": dna(rng, 400)}
    fa = tmp_path / "g.fa"
    fa.write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    fn = segment_genome if head == "segment" else tracks_genome
    kw = dict(model=model, species="human", window=128, batch_size=2)
    one = fn(fa, tmp_path / "one", **kw)
    parts = [tmp_path / f"p{i}" for i in (1, 2, 3)]
    for i, p in enumerate(parts, 1):
        fn(fa, p, shard=(i, 3), **kw)
    merge_parts([str(p) for p in reversed(parts)], tmp_path / "merged")
    chroms = [(k, len(v)) for k, v in seqs.items()]
    _same_outputs(tmp_path / "one", tmp_path / "merged", one.features, chroms)
    if head == "segment":
        assert gzip.open(tmp_path / "one" / "segments.bed.gz").read() == \
            gzip.open(tmp_path / "merged" / "segments.bed.gz").read()
    else:
        assert not (tmp_path / "merged" / "segments.bed.gz").exists()
    info = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert info["n_windows"] == one.n_windows and info["model"]["species"] == "human"


def test_sigkill_then_resume(tmp_path):
    rng = np.random.default_rng(5)
    fa = tmp_path / "g.fa"
    fa.write_text(">a\n" + dna(rng, 30000) + "N" * 500 + dna(rng, 8000) + "\n>b\n" + dna(rng, 3000) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(out, *extra):
        return [NTK, "tracks", fa, "-m", POST, "--species", "mouse", "-o", out, "--window", "256", "--batch-size",
                "1", "--threads", "1", "-q", *extra]

    ref = subprocess.run(cmd(tmp_path / "ref"), capture_output=True, text=True, env=env)
    assert ref.returncode == 0, ref.stderr
    out, partial = tmp_path / "out", tmp_path / ".out.ntk-partial"
    resume = ["--resume", "--resume-chunk-bp", "2000"]
    p = subprocess.Popen(cmd(out, *resume), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and len(list(partial.glob("chunk-*.npz"))) < 3:
        time.sleep(0.01)
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = len(list(partial.glob("chunk-*.npz")))
    assert done >= 3 and not out.exists()
    bad = subprocess.run(cmd(out, *resume, "--tracks", "m_track1"), capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "different options" in bad.stderr and partial.is_dir()
    again = subprocess.run(cmd(out, *resume), capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert not partial.exists()
    info = json.loads((out / "run.json").read_text())["resume"]
    assert info["chunks_reused"] >= done and info["chunks_reused"] + info["chunks_computed"] == -(-41500 // 2000)
    _same_outputs(tmp_path / "ref", out, ["m_track1", "m_track2"], [("a", 38500), ("b", 3000)])


def test_open_file_limit_checked_up_front(tmp_path):
    fa = tmp_path / "g.fa"
    fa.write_text(">c\n" + "ACGT" * 10 + "\n")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (66, resource.getrlimit("
            "resource.RLIMIT_NOFILE)[1])); from ntk.cli.main import main; sys.argv = ['ntk'] + sys.argv[1:]; main()")
    p = subprocess.run([sys.executable, "-c", code, "tracks", str(fa), "-m", str(POST), "--species", "human", "-o",
                        str(tmp_path / "o"), "--window", "64"], capture_output=True, text=True)
    assert p.returncode == 2 and "open-file limit (66)" in p.stderr and "--tracks" in p.stderr
    assert not (tmp_path / "o").exists()
