"""Unit tests of ntk/io/segments.py: the streaming threshold caller against a plain reference implementation (any
chunking gives the same calls), and the bgzipped, tabix-indexed segments BED."""
from __future__ import annotations

import gzip
import subprocess

import numpy as np
import pytest
from conftest import need_tool

from ntk.io.segments import SegmentCaller, SegmentsBedWriter


def reference_calls(v: np.ndarray, start: int, threshold: float, min_length: int, merge_gap: int):
    """Segments of one stretch of consecutive values, written as plainly as possible."""
    runs, i = [], 0
    while i < len(v):
        if v[i] >= threshold:
            j = i
            while j < len(v) and v[j] >= threshold:
                j += 1
            runs.append([i, j])
            i = j
        else:
            i += 1
    joined = []
    for r in runs:
        if joined and r[0] - joined[-1][1] <= merge_gap:
            joined[-1][1] = r[1]
        else:
            joined.append(r)
    return [(start + s, start + e, float(np.mean(v[s:e], dtype=np.float64)), float(v[s:e].max()))
            for s, e in joined if e - s >= max(min_length, 1)]


def stream(caller: SegmentCaller, pieces):
    """Feed ``(chrom, start, values)`` pieces; all calls as (start, end, mean, max)."""
    out = []
    for chrom, start, values in pieces:
        out += list(zip(*[a.tolist() for a in caller.add(chrom, start, values)]))
    out += list(zip(*[a.tolist() for a in caller.finish()]))
    return out


def _chunks(v: np.ndarray, start: int, rng, chrom="chr1"):
    cuts = sorted(set(rng.integers(0, len(v), rng.integers(0, 12)).tolist()) | {0, len(v)})
    return [(chrom, start + a, v[a:b]) for a, b in zip(cuts, cuts[1:])]


def _values(rng, n):
    """Probabilities that hover around 0.5 (runs, flicker, gaps of a few positions)."""
    walk = np.cumsum(rng.normal(0, 0.15, n))
    return (1 / (1 + np.exp(-walk))).astype(np.float32)


def _same(got, want):
    assert [(s, e) for s, e, _, _ in got] == [(s, e) for s, e, _, _ in want]
    for (_, _, m, x), (_, _, wm, wx) in zip(got, want):
        assert m == pytest.approx(wm, rel=1e-12) and x == wx


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("min_length,merge_gap", [(1, 0), (1, 10), (5, 3), (20, 0)])
def test_any_chunking_gives_the_reference_calls(seed, min_length, merge_gap):
    rng = np.random.default_rng(seed)
    v = _values(rng, int(rng.integers(1, 3000)))
    want = reference_calls(v, 1000, 0.5, min_length, merge_gap)
    _same(stream(SegmentCaller(0.5, min_length, merge_gap), [("chr1", 1000, v)]), want)
    _same(stream(SegmentCaller(0.5, min_length, merge_gap), _chunks(v, 1000, rng)), want)
    head = v[:400]  # one position per chunk (the carried-over state at every position)
    one_by_one = [("chr1", 1000 + i, head[i:i + 1]) for i in range(len(head))]
    _same(stream(SegmentCaller(0.5, min_length, merge_gap), one_by_one),
          reference_calls(head, 1000, 0.5, min_length, merge_gap))


def test_positions_without_value_and_contig_changes_break_segments():
    v = np.array([0.9, 0.9, 0.9], np.float32)
    c = SegmentCaller(0.5, merge_gap=10)
    # a chunk that does not start where the previous one ended (an N run between them): never joined
    got = stream(c, [("chr1", 0, v), ("chr1", 5, v), ("chr2", 8, v)])
    assert [(s, e) for s, e, _, _ in got] == [(0, 3), (5, 8), (8, 11)]


def test_gap_joining_includes_the_gap_in_the_mean():
    v = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 1.0], np.float32)
    (s, e, mean, mx), = stream(SegmentCaller(0.5, merge_gap=2), [("c", 10, v)])
    assert (s, e, mx) == (10, 16, 1.0) and mean == pytest.approx(4 / 6)
    assert [(s, e) for s, e, _, _ in stream(SegmentCaller(0.5, merge_gap=1), [("c", 10, v)])] == [(10, 12), (14, 16)]
    # the gap spans a chunk boundary, with no value at all above the threshold in the middle chunk
    got = stream(SegmentCaller(0.5, merge_gap=2), [("c", 10, v[:2]), ("c", 12, v[2:3]), ("c", 13, v[3:])])
    assert [(s, e) for s, e, _, _ in got] == [(10, 16)] and got[0][2] == pytest.approx(4 / 6)


def test_threshold_is_inclusive_and_empty_input():
    got = stream(SegmentCaller(0.5), [("c", 0, np.array([0.5, 0.4999, 0.5], np.float32))])
    assert [(s, e) for s, e, _, _ in got] == [(0, 1), (2, 3)]
    assert stream(SegmentCaller(0.5), []) == []
    assert stream(SegmentCaller(0.5), [("c", 0, np.zeros(0, np.float32))]) == []
    assert stream(SegmentCaller(0.5), [("c", 0, np.zeros(100, np.float32))]) == []


# -- SegmentsBedWriter ------------------------------------------------------------------------------------------
def _write_bed(path, pieces, features):
    w = SegmentsBedWriter(path, features, threshold=0.5, min_length=3, merge_gap=2)
    for chrom, start, values in pieces:
        w.add(chrom, start, values)
    w.close()
    return w


def test_segments_bed_sorted_indexed_and_independent_of_chunking(tmp_path):
    rng = np.random.default_rng(11)
    feats = ["exon", "intron"]
    data = {c: np.column_stack([_values(rng, n), _values(rng, n)]) for c, n in (("chrB", 2000), ("chrA", 1500))}
    whole = [(c, 0, v) for c, v in data.items()]  # contigs in FASTA order: chrB first
    a = tmp_path / "a.bed.gz"
    w = _write_bed(str(a), whole, feats)
    chunked = [p for c, v in data.items() for p in _chunks(v, 0, rng, c)]
    b = tmp_path / "b.bed.gz"
    _write_bed(str(b), chunked, feats)
    assert gzip.decompress(a.read_bytes()) == gzip.decompress(b.read_bytes())  # chunking changes nothing

    lines = [ln.split("\t") for ln in gzip.decompress(a.read_bytes()).decode().splitlines()]
    assert len(lines) == w.n_segments > 0
    # sorted by contig in arrival order, then start, end, feature order
    order = {"chrB": 0, "chrA": 1}
    keys = [(order[x[0]], int(x[1]), int(x[2]), feats.index(x[3])) for x in lines]
    assert keys == sorted(keys)
    for chrom, s, e, feat, score, strand, mean, mx in lines:
        want = [c for c in reference_calls(data[chrom][:, feats.index(feat)], 0, 0.5, 3, 2) if c[0] == int(s)]
        assert len(want) == 1 and want[0][1] == int(e)
        assert float(mean) == pytest.approx(want[0][2], abs=5e-5)  # 4 decimals
        assert abs(int(score) - 1000 * want[0][2]) <= 0.5 + 1e-6  # round(1000 x mean_prob)
        assert strand == "." and float(mx) == pytest.approx(want[0][3], abs=5e-5)
    # the tabix index answers region queries (the reference tool)
    region = subprocess.run([need_tool("tabix"), str(a), "chrA:100-400"], check=True, capture_output=True,
                            text=True).stdout.splitlines()
    want = [ln for ln in ("\t".join(x) for x in lines)
            if ln.split("\t")[0] == "chrA" and int(ln.split("\t")[2]) > 99 and int(ln.split("\t")[1]) < 400]
    assert region == want


def test_segments_bed_with_no_segment_is_a_valid_empty_file(tmp_path):
    p = tmp_path / "e.bed.gz"
    w = _write_bed(str(p), [("chr1", 0, np.zeros((50, 1), np.float32))], ["exon"])
    assert w.n_segments == 0 and gzip.decompress(p.read_bytes()) == b""
    assert (tmp_path / "e.bed.gz.tbi").is_file()
