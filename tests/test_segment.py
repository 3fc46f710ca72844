"""ntk segment (issue #3): the pipeline against direct forwards of the golden SegmentNT checkpoint.

Every check compares what the pipeline wrote (read back with pyBigWig) with ``m(...).segment_probabilities``
computed here, window by window, through the public Python API.
"""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyBigWig
import pysam
import pytest
import torch

import ntk
from ntk.errors import NtkError
from ntk.io.segments import SegmentCaller
from ntk.pipelines.segment import segment_genome
from ntk.plan.windows import tile

from conftest import F32_EPS, REORDER_ULPS, assert_f32_close

PROB_TOL = REORDER_ULPS * F32_EPS  # probabilities: scale 1
F64_SUM_RTOL = 1e-11  # float64 sums of <= 6,000 terms in another order: <= n x eps64 = 1.3e-12

GOLDEN = Path(__file__).parent / "data" / "golden" / "segment_nt_tiny"
RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def m():
    torch.manual_seed(0)
    return ntk.load_model(str(GOLDEN), device="cpu", dtype=torch.float32)


def random_dna(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


def write_fasta(path: Path, records: dict[str, str], width: int = 60) -> Path:
    with open(path, "w") as f:
        for name, seq in records.items():
            f.write(f">{name} test record\n")
            for i in range(0, len(seq), width):
                f.write(seq[i:i + width] + "\n")
    return path


def direct(m, seq: str) -> np.ndarray:
    """segment_probabilities [len(seq), F] of one window, straight from the Python API."""
    with torch.inference_mode():
        out = m(m.tokenizer.encode([seq]).input_ids)
    return out.segment_probabilities[0].numpy()


def track(out: Path, feature: str, chrom: str) -> np.ndarray:
    bw = pyBigWig.open(str(out / f"{feature}.bw"))
    try:
        return np.asarray(bw.values(chrom, 0, bw.chroms()[chrom]), dtype=np.float64)
    finally:
        bw.close()


def tracks(out: Path, m, chrom: str) -> np.ndarray:
    return np.stack([track(out, f, chrom) for f in m.features], axis=1)  # [L, F], NaN where no value


def test_default_window_is_trained_length(m):
    assert m.config.max_tokens == 157
    assert m.config.default_window("segment") == 936  # (157 - 1) * 6, a multiple of 24


def test_one_window_equals_python_api(m, tmp_path):
    seq = random_dna(936)
    fa = write_fasta(tmp_path / "g.fa", {"c1": seq})
    res = segment_genome(fa, tmp_path / "out", model=m)
    got = tracks(tmp_path / "out", m, "c1")
    assert_f32_close(got, direct(m, seq), scale=1)
    assert res.n_windows == 1 and res.bp_scored == 936
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["bp_scored"] == 936 and info["options"]["window"] == 936 and info["model"]["features"] == m.features
    assert set(info["timings_s"]) >= {"total", "model", "load_model"}


def test_multi_window_positions_come_from_window_centres(m, tmp_path):
    L, W, crop = 900, 240, 30
    seq = random_dna(L)
    fa = write_fasta(tmp_path / "g.fa", {"c1": seq})
    segment_genome(fa, tmp_path / "out", model=m, window=W, crop=crop, batch_size=2, blend="none")
    got = tracks(tmp_path / "out", m, "c1")
    assert not np.isnan(got).any()
    # the direct forward of every window of length W that fits in the contig (any start)
    starts = np.arange(L - W + 1)
    with torch.inference_mode():
        preds = np.concatenate([m(m.tokenizer.encode([seq[s:s + W] for s in starts[i:i + 128]]).input_ids)
                                .segment_probabilities.numpy() for i in range(0, starts.size, 128)])
    for p in range(L):
        ss = starts[max(0, p - W + 1): min(p, L - W) + 1]
        owners = ss[np.abs(preds[ss, p - ss] - got[p]).max(axis=1) <= PROB_TOL]
        assert owners.size, f"position {p} matches no window's direct forward"
        inner = np.minimum(p - owners, owners + W - 1 - p)  # distance to the window edge
        assert inner.max() >= crop or p < crop or p >= L - crop, f"position {p} taken {inner} nt from an edge"
    # and the pipeline's tiling is the shared one: each kept part equals the direct forward of its window
    for w in tile(0, L, W, crop, unit=24):
        assert_f32_close(got[w.keep_start:w.keep_end],
                                   preds[w.start][w.keep_start - w.start:w.keep_end - w.start], scale=1)


def test_blending_removes_the_step_where_disagreeing_windows_meet(m, tmp_path, monkeypatch):
    """A model whose windows disagree: each window predicts one constant for all its positions (a function of
    its tokens), so every step in the output comes from where windows meet. Cut at the middle of the overlap
    (``blend="none"``) each seam is a step of the two windows' difference; blended, the difference is spread
    over the overlap and no step is larger than difference / overlap."""
    L, W, crop = 2000, 240, 60
    seq = random_dna(L)
    fa = write_fasta(tmp_path / "g.fa", {"c1": seq})
    forward = m.forward

    def disagreeing(ids, *args, **kwargs):
        out = forward(ids, *args, **kwargs)
        c = (ids[:, 1:] % 5).float().mean(1) / 4  # one value per window
        out.segment_probabilities = c[:, None, None].expand_as(out.segment_probabilities).contiguous()
        return out

    monkeypatch.setattr(m, "forward", disagreeing)
    wins = tile(0, L, W, crop, unit=24)
    const = [float(m(m.tokenizer.encode([seq[w.start:w.end]]).input_ids).segment_probabilities[0, 0, 0])
             for w in wins]
    seams = [w.keep_start for w in wins[1:]]
    diffs = np.abs(np.diff(const))
    assert diffs.max() > 0.01  # the windows do disagree
    segment_genome(fa, tmp_path / "cut", model=m, window=W, crop=crop, blend="none")
    segment_genome(fa, tmp_path / "blend", model=m, window=W, crop=crop)
    cut, blended = tracks(tmp_path / "cut", m, "c1")[:, 0], tracks(tmp_path / "blend", m, "c1")[:, 0]
    step_cut, step_blend = np.abs(np.diff(cut)), np.abs(np.diff(blended))
    np.testing.assert_allclose(step_cut[np.array(seams) - 1], diffs, atol=PROB_TOL, rtol=0)  # a step at every seam
    assert step_cut.max() == pytest.approx(diffs.max(), abs=PROB_TOL)
    # spread over each blend zone: half the overlap on each side of the seam (2*crop nt between regular windows),
    # at most half of either kept part (the last window of a run is shifted back and keeps less)
    half = [min(b.keep_start - b.start, a.end - a.keep_end, (a.keep_end - a.keep_start) // 2,
                (b.keep_end - b.keep_start) // 2) for a, b in zip(wins, wins[1:])]
    assert half[0] == crop
    assert step_blend.max() <= max(d / (2 * h) for d, h in zip(diffs, half)) + PROB_TOL
    assert step_blend.max() < step_cut.max() / 5
    # a position only one window covers keeps that window's value exactly
    np.testing.assert_allclose(blended[:W - 2 * crop], const[0], atol=PROB_TOL, rtol=0)
    np.testing.assert_allclose(blended[wins[-2].end:], const[-1], atol=PROB_TOL, rtol=0)


def test_window_longer_than_trained_uses_reference_rescaling(m, tmp_path):
    seq = random_dna(1200)  # 200 DNA tokens + CLS = 201 > 157 trained tokens
    fa = write_fasta(tmp_path / "g.fa", {"c1": seq})
    segment_genome(fa, tmp_path / "out", model=m, window=1200, crop=0)
    got = tracks(tmp_path / "out", m, "c1")
    ids = m.tokenizer.encode([seq]).input_ids
    with torch.inference_mode():
        ref = m(ids, rescaling_factor=201 / (m.config.max_position_embeddings - 2)).segment_probabilities[0]
        trained = m(ids, rescaling_factor=m.config.rescaling_factor).segment_probabilities[0]
    assert_f32_close(got, ref.numpy(), scale=1)
    assert not np.allclose(got, trained.numpy(), atol=1e-4)  # the factor really changed


def test_n_runs_iupac_and_short_runs(m, tmp_path):
    a, b, c = random_dna(936), random_dna(20), random_dna(480)
    seq = a + "N" * 50 + b + "RYKM" + c + "NN"
    fa = write_fasta(tmp_path / "g.fa", {"c1": seq})
    segment_genome(fa, tmp_path / "out", model=m)
    got = tracks(tmp_path / "out", m, "c1")
    assert_f32_close(got[:936], direct(m, a), scale=1)
    assert np.isnan(got[936:936 + 50 + 20 + 4]).all()  # N run, a 20-nt run (< 24) and IUPAC codes: no value
    c0 = 936 + 50 + 20 + 4
    assert_f32_close(got[c0:c0 + 480], direct(m, c), scale=1)  # 480 = 20 x 24: one exact window
    assert np.isnan(got[-2:]).all()


def test_lowercase_and_iupac_equal_uppercase_and_n(m, tmp_path):
    seq = random_dna(1500)
    soft = seq[:300] + seq[300:900].lower() + seq[900:]
    with_n = seq[:700] + "NNN" + seq[703:]
    with_iupac = seq[:700] + "rSw" + seq[703:]
    fa = write_fasta(tmp_path / "g.fa", {"up": seq, "soft": soft, "n": with_n, "iupac": with_iupac})
    segment_genome(fa, tmp_path / "out", model=m)
    out = tmp_path / "out"
    np.testing.assert_array_equal(tracks(out, m, "soft"), tracks(out, m, "up"))
    np.testing.assert_array_equal(tracks(out, m, "iupac"), tracks(out, m, "n"))
    assert np.isnan(tracks(out, m, "n")[700:703]).all()


def test_contigs_shorter_than_a_window_and_multi_contig(m, tmp_path):
    recs = {"long": random_dna(2000), "short": random_dna(500), "tiny": random_dna(23), "exact": random_dna(48)}
    fa = write_fasta(tmp_path / "g.fa", recs)
    segment_genome(fa, tmp_path / "out", model=m)
    out = tmp_path / "out"
    for f in m.features:
        bw = pyBigWig.open(str(out / f"{f}.bw"))
        assert bw.chroms() == {k: len(v) for k, v in recs.items()}  # header from the .fai, every contig
        assert list(bw.chroms()) == list(recs)  # FASTA order
        bw.close()
    short = tracks(out, m, "short")
    # 500 nt: one 480-nt window from the start, a second one shifted back to end at 500, owned up to / from the
    # middle of the overlap (250); blended linearly over [125, 375) (half the overlap, at most half of either
    # kept part on each side)
    first, second = direct(m, recs["short"][:480]), direct(m, recs["short"][20:])
    assert_f32_close(short[:125], first[:125], scale=1)
    assert_f32_close(short[375:], second[355:], scale=1)
    t = ((np.arange(250) + 0.5) / 250)[:, None]
    assert_f32_close(short[125:375], (1 - t) * first[125:375] + t * second[105:355], scale=1)
    assert np.isnan(tracks(out, m, "tiny")).all()
    assert_f32_close(tracks(out, m, "exact"), direct(m, recs["exact"]), scale=1)
    assert not np.isnan(tracks(out, m, "long")).any()


def test_regions_r_and_bed(m, tmp_path):
    seq = random_dna(3000)
    other = random_dna(1000)
    fa = write_fasta(tmp_path / "g.fa", {"c1": seq, "c2": other})
    segment_genome(fa, tmp_path / "r", model=m, regions=["c1:101-1060", "c1:1001-1200"])  # overlapping: merged
    got = tracks(tmp_path / "r", m, "c1")
    assert np.isnan(got[:100]).all() and np.isnan(got[1200:]).all()
    assert np.isnan(tracks(tmp_path / "r", m, "c2")).all()
    # a region is segmented as its own sequence: same as a FASTA holding just that stretch
    fa2 = write_fasta(tmp_path / "sub.fa", {"c1": seq[100:1200]})
    segment_genome(fa2, tmp_path / "sub", model=m)
    assert_f32_close(got[100:1200], tracks(tmp_path / "sub", m, "c1"), scale=1)

    bed = tmp_path / "regions.bed"
    bed.write_text("track name=x\nc2\t0\t936\tfirst\nc1\t100\t1060\nc1\t1000\t1200\n")
    segment_genome(fa, tmp_path / "bed", model=m, regions_file=str(bed))
    np.testing.assert_array_equal(tracks(tmp_path / "bed", m, "c1"), got)
    c2 = tracks(tmp_path / "bed", m, "c2")
    assert_f32_close(c2[:936], direct(m, other[:936]), scale=1)
    assert np.isnan(c2[936:]).all()


def test_rc_average(m, tmp_path):
    seq = random_dna(936)
    fa = write_fasta(tmp_path / "g.fa", {"c1": seq})
    segment_genome(fa, tmp_path / "out", model=m, rc_average=True)
    rc = seq[::-1].translate(str.maketrans("ACGT", "TGCA"))
    expected = (direct(m, seq) + direct(m, rc)[::-1]) / 2
    assert_f32_close(tracks(tmp_path / "out", m, "c1"), expected, scale=1)
    assert not np.allclose(expected, direct(m, seq), atol=1e-3)  # the reverse strand really contributes


def test_bgzip_and_plain_gzip_fasta(m, tmp_path):
    recs = {"a": random_dna(1200), "b": random_dna(700)}
    plain = write_fasta(tmp_path / "g.fa", recs)
    segment_genome(plain, tmp_path / "plain", model=m)
    bgz = tmp_path / "g2.fa.gz"
    pysam.tabix_compress(str(plain), str(bgz))
    segment_genome(bgz, tmp_path / "bgzip", model=m, features=["exon"])
    assert sorted(p.name for p in (tmp_path / "bgzip").iterdir()) == [
        "exon.bw", "run.json", "segments.bed.gz", "segments.bed.gz.tbi"]
    gz = tmp_path / "g3.fa.gz"
    with open(plain, "rb") as fi, gzip.open(gz, "wb") as fo:
        shutil.copyfileobj(fi, fo)
    segment_genome(gz, tmp_path / "gzip", model=m, features=["exon"])
    for name in recs:
        np.testing.assert_array_equal(track(tmp_path / "bgzip", "exon", name), track(tmp_path / "plain", "exon", name))
        np.testing.assert_array_equal(track(tmp_path / "gzip", "exon", name), track(tmp_path / "plain", "exon", name))


def expected_segments(vals: np.ndarray, thr: float, min_len: int, gap: int) -> list[tuple[int, int]]:
    """Segments of one track by the definition (plain Python): runs >= thr, joined across <= gap positions
    below thr (never across a position without a value), then at least min_len long."""
    runs, cur = [], None
    for i, x in enumerate(vals):
        if not np.isnan(x) and x >= thr:
            cur = [i, i + 1] if cur is None else [cur[0], i + 1]
        elif cur is not None:
            runs.append(cur)
            cur = None
    if cur is not None:
        runs.append(cur)
    joined: list[list[int]] = []
    for s, e in runs:
        if joined and s - joined[-1][1] <= gap and not np.isnan(vals[joined[-1][1]:s]).any():
            joined[-1][1] = e
        else:
            joined.append([s, e])
    return [(s, e) for s, e in joined if e - s >= min_len]


@pytest.mark.parametrize("gap", [0, 10])
def test_segments_bed_matches_tracks_and_tools_read_it(m, tmp_path, gap):
    recs = {"c1": random_dna(2500) + "N" * 30 + random_dna(600), "c2": random_dna(900)}
    fa = write_fasta(tmp_path / "g.fa", recs)
    thr, min_len = 0.52, 3
    segment_genome(fa, tmp_path / "out", model=m, threshold=thr, min_length=min_len, merge_gap=gap)
    out = tmp_path / "out"
    assert json.loads((out / "run.json").read_text())["options"]["merge_gap"] == gap
    rows = [ln.split("\t") for ln in gzip.open(out / "segments.bed.gz", "rt").read().splitlines()]
    assert rows, "the tiny model should call some segments at this threshold"
    # expected calls from the BigWig values, per feature (mean over the whole span, joined gaps included)
    expected = set()
    for name in recs:
        vals = tracks(out, m, name)
        for fi, f in enumerate(m.features):
            for s, e in expected_segments(vals[:, fi], thr, min_len, gap):
                v = vals[s:e, fi].astype(np.float64)
                expected.add((name, int(s), int(e), f, f"{v.mean():.4f}", f"{v.max():.4f}"))
    got = {(r[0], int(r[1]), int(r[2]), r[3], r[6], r[7]) for r in rows}
    assert got == expected
    if gap:  # joining really happened on this input, and no two calls of a feature are <= gap apart any more
        plain = segment_genome(fa, tmp_path / "plain", model=m, threshold=thr, min_length=min_len, merge_gap=0)
        assert plain.n_segments > len(rows)
        by = {}
        for r in rows:
            by.setdefault((r[0], r[3]), []).append((int(r[1]), int(r[2])))
        for iv in by.values():
            assert all(b[0] - a[1] > gap for a, b in zip(iv, iv[1:]))
    assert all(r[5] == "." and 0 <= int(r[4]) <= 1000 for r in rows)
    order = [(list(recs).index(r[0]), int(r[1])) for r in rows]
    assert order == sorted(order)  # FASTA contig order, then start
    # tabix index works, bedtools reads it
    with pysam.TabixFile(str(out / "segments.bed.gz")) as tb:
        assert list(tb.contigs) == [c for c in recs if any(r[0] == c for r in rows)]
        assert len(list(tb.fetch("c1", 0, 500))) == sum(1 for r in rows if r[0] == "c1" and int(r[1]) < 500)
    if shutil.which("bedtools") is None:
        pytest.skip("bedtools not installed")
    merged = subprocess.run(["bedtools", "merge", "-i", str(out / "segments.bed.gz")], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert merged and all(len(ln.split("\t")) == 3 for ln in merged)


def test_parallel_bigwig_writers_give_identical_files(m, tmp_path, monkeypatch):
    recs = {"c1": random_dna(1800) + "N" * 10 + random_dna(700), "c2": random_dna(600)}
    fa = write_fasta(tmp_path / "g.fa", recs)
    segment_genome(fa, tmp_path / "seq", model=m)  # 2 cores here: one writer thread
    monkeypatch.setattr("ntk.pipelines.segment.os.cpu_count", lambda: 8)  # a pool of 3 BigWig writer threads
    segment_genome(fa, tmp_path / "par", model=m)
    for f in m.features:
        assert (tmp_path / "seq" / f"{f}.bw").read_bytes() == (tmp_path / "par" / f"{f}.bw").read_bytes()


def test_segment_caller_streaming_equals_whole_array():
    rng = np.random.default_rng(0)
    v = rng.random(5000).astype(np.float32)
    v[1000:1400] = 0.9  # a long segment crossing several chunks
    whole = SegmentCaller(0.6, 2).add("c", 0, v) + ()
    whole = tuple(np.concatenate([a, b]) for a, b in zip(whole, SegmentCaller(0.6, 2).finish()))
    ref = SegmentCaller(0.6, 2)
    parts = [ref.add("c", 0, v)]
    parts.append(ref.finish())
    caller = SegmentCaller(0.6, 2)
    cuts = [0, 1, 2, 7, 1000, 1100, 1250, 1399, 1400, 3333, 5000]
    got = [caller.add("c", a, v[a:b]) for a, b in zip(cuts, cuts[1:])] + [caller.finish()]
    for i in range(4):
        # starts, ends (integers) and maxima (a max is exact) are equal; means are float64 sums in another order:
        # relative error <= n x eps64 (n <= 5000 terms: 1.1e-12), bound 1e-11
        g, p_ = np.concatenate([g[i] for g in got]), np.concatenate([p[i] for p in parts])
        if i == 2:
            np.testing.assert_allclose(g, p_, rtol=F64_SUM_RTOL, atol=0)
        else:
            np.testing.assert_array_equal(g, p_)
    assert whole[0].size == parts[0][0].size + parts[1][0].size
    # with --merge-gap: the same calls whatever the chunking, and the plain definition
    v = (rng.random(6000) * 0.8 + 0.2 * (rng.random(6000) < 0.3)).astype(np.float32)  # flickers around 0.6
    v[2990:3030] = 0.1  # a gap too wide to join, across a chunk cut
    for gap in (1, 5, 12):
        want = expected_segments(v, 0.6, 2, gap)
        for cuts in ([0, 6000], [0, 1, 3, 1000, 2995, 3000, 3004, 3008, 3025, 5999, 6000],
                     sorted({0, 6000, *rng.integers(1, 6000, 40).tolist()})):
            c = SegmentCaller(0.6, 2, merge_gap=gap)
            got = [c.add("c", a, v[a:b]) for a, b in zip(cuts, cuts[1:])] + [c.finish()]
            s_, e_, mean, mx = (np.concatenate([g[i] for g in got]) for i in range(4))
            assert list(zip(s_.tolist(), e_.tolist())) == want, (gap, cuts[:5])
            np.testing.assert_allclose(mean, [v[a:b].astype(np.float64).sum() / (b - a) for a, b in want],
                                       rtol=F64_SUM_RTOL, atol=0)
            np.testing.assert_array_equal(mx, [v[a:b].max() for a, b in want])
    # a gap between chunks (no value) closes a segment
    c = SegmentCaller(0.5)
    s1 = c.add("c", 0, np.full(10, 0.9, np.float32))
    s2 = c.add("c", 20, np.full(10, 0.9, np.float32))
    s3 = c.finish()
    assert s1[0].size == 0 and list(s2[0]) == [0] and list(s2[1]) == [10] and list(s3[0]) == [20]


def test_errors_leave_nothing_behind(m, tmp_path):
    fa = write_fasta(tmp_path / "g.fa", {"c1": random_dna(2000)})
    out = tmp_path / "out"
    cases = [
        dict(regions=["chr9:1-100"]),
        dict(regions=["c1:1-5000"]),
        dict(features=["enhancer"]),
        dict(window=1000),
        dict(window=936, crop=500),
    ]
    for kw in cases:
        with pytest.raises(NtkError):
            segment_genome(fa, out, model=m, **kw)
        assert not out.exists()
    # an invalid character deep in the contig is found by the reader thread mid-run
    bad = write_fasta(tmp_path / "bad.fa", {"ok": random_dna(3000), "c1": random_dna(1500) + "X" + random_dna(99)})
    with pytest.raises(NtkError, match="invalid nucleotide 'X'"):
        segment_genome(bad, out, model=m)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
