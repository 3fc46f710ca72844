"""The track writers' fast paths against straightforward references (issue #19: less CPU per 2 Mbp, same bytes):
the segments BED's numpy line formatter against the polars formatter it replaced, and the BigWig summary's sum
of squares against an exactly rounded sum."""
from __future__ import annotations

import math
import struct

import numpy as np

from ntk.io.segments import _format_bed, _format_bed_polars
from ntk.io.tracks import BigWigWriter


def _rows(rng: np.random.Generator, n: int, n_features: int) -> np.ndarray:
    s = rng.integers(0, 2**32 - 1000, n)
    e = s + rng.integers(1, 1000, n)
    return np.column_stack((s, e, rng.integers(0, n_features, n), rng.random(n), rng.random(n)))


def test_bed_lines_match_polars_on_random_rows():
    rng = np.random.default_rng(1)
    feats = ["exon", "protein_coding_gene", "5UTR", "x"]
    for n in (1, 2, 1000, 20000):
        rows = _rows(rng, n, len(feats))
        assert _format_bed("chr1", rows, feats) == _format_bed_polars("chr1", rows, feats)


def test_bed_lines_match_polars_at_rounding_edges():
    """Exact binary ties of the 4th decimal (k/32: ties to even), values within an ulp of a tie, of 1.0 and of
    0, float32-rounded probabilities (as the caller's max column holds), and values outside [0, 1e4) (the
    polars path)."""
    ties = np.arange(33) / 32
    near = np.concatenate([np.nextafter(ties, 2), np.nextafter(ties, -1)[1:]])
    decimal_ties = (np.arange(0, 20000, 2) + 1) / 20000  # x.xxxx5 in decimal: never exact in binary
    f32 = np.random.default_rng(2).random(5000).astype(np.float32).astype(np.float64)
    edges = np.array([0.0, 5e-324, 1e-300, 0.99995, 0.999949999, 1.0, 9999.99995, 9999.4])
    vals = np.concatenate([ties, near, decimal_ties, f32, edges])
    n = vals.size
    rows = np.column_stack((np.arange(n), np.arange(n) + 7, np.arange(n) % 3, vals, vals[::-1]))
    feats = ["a", "bb", "ccc"]
    assert _format_bed("chrX_random", rows, feats) == _format_bed_polars("chrX_random", rows, feats)
    for odd in (1e4, 123456.78, -0.25, -0.0, np.nan):
        r = rows[:3].copy()
        r[1, 3] = odd
        assert _format_bed("c", r, feats) == _format_bed_polars("c", r, feats)


def test_bigwig_sum_of_squares_is_exactly_rounded(tmp_path):
    """The header's sumSquares: a pairwise float64 sum of exact float32 squares, within a few float64 ulps of the
    exact sum (pairwise summation: relative error <= ~log2(n) * 2**-53 for positive terms) for any chunking."""
    rng = np.random.default_rng(3)
    v = rng.random(300_001).astype(np.float32)
    w = BigWigWriter(tmp_path / "t.bw", [("c", v.size)], zoom_levels=2)
    for a in range(0, v.size, 70_000):
        w.add("c", a, v[a:a + 70_000])
    w.close()
    d = v.astype(np.float64)
    exact = math.fsum((d * d).tolist())
    raw = (tmp_path / "t.bw").read_bytes()
    (summary_at,) = struct.unpack_from("<Q", raw, 44)  # totalSummaryOffset (pyBigWig reports it as an integer)
    bases, lo, hi, total, got = struct.unpack_from("<Qdddd", raw, summary_at)
    assert bases == v.size and lo == v.min() and hi == v.max()
    assert abs(got - exact) <= 20 * 2**-53 * exact
