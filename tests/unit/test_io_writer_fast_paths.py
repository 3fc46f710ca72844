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
    for odd in (1e4, 123456.78, -0.25, -0.0):
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


def _zoom_levels(raw: bytes):
    """(reduction, records, records per block) of every zoom level of a BigWig, read plainly from its bytes."""
    import zlib

    n_zooms = struct.unpack_from("<H", raw, 6)[0]
    out = []
    for k in range(n_zooms):
        reduction, _, data_at, index_at = struct.unpack_from("<IIQQ", raw, 64 + 24 * k)
        (count,) = struct.unpack_from("<I", raw, data_at)
        rest, recs, per_block = raw[data_at + 4:index_at], [], []
        while rest:
            d = zlib.decompressobj()
            block = d.decompress(rest)
            rest = d.unused_data
            per_block.append(len(block) // 32)
            recs.append(block)
        rows = np.frombuffer(b"".join(recs), dtype=[("chrom", "<u4"), ("start", "<u4"), ("end", "<u4"),
                                                   ("valid", "<u4"), ("min", "<f4"), ("max", "<f4"),
                                                   ("sum", "<f4"), ("sumsq", "<f4")])
        assert rows.size == count
        out.append((reduction, rows, per_block))
    return out


def test_bigwig_zoom_blocks_against_plain_summaries(tmp_path):
    """Zoom records, compressed block by block while values stream in: every level against per-bin summaries
    computed plainly from the values, blocks of 1,024 records (the last one shorter), the same records whatever
    the chunking (chunks on bin bounds of every level: a bin that spans chunks carries its float32 sum over, which
    may round differently)."""
    rng = np.random.default_rng(4)
    sizes = [("a", 150_001), ("b", 70_000)]
    vals = {c: rng.random(n).astype(np.float32) for c, n in sizes}
    files = []
    for step in (150_016, 4_096, 10_240):  # multiples of every level's bin: no bin spans two chunks
        w = BigWigWriter(tmp_path / f"z{step}.bw", sizes, zoom_levels=4)
        for c, n in sizes:
            for a in range(0, n, step):
                w.add(c, a, vals[c][a:a + step])
        w.close()
        files.append(_zoom_levels((tmp_path / f"z{step}.bw").read_bytes()))
    for other in files[1:]:
        for (r0, rows0, _), (r1, rows1, _) in zip(files[0], other):
            assert r0 == r1 and rows0.tobytes() == rows1.tobytes()
    assert [r for r, _, _ in files[0]] == [32, 128, 512, 2048]
    for r, rows, per_block in files[0]:
        assert all(b == 1024 for b in per_block[:-1]) and 0 < per_block[-1] <= 1024
        expect = []
        for cid, (c, n) in enumerate(sizes):
            for s in range(0, n, r):
                v = vals[c][s:s + r].astype(np.float64)
                expect.append((cid, s, min(s + r, n), v.size, v.min(), v.max(), v.sum(), (v * v).sum()))
        e = np.array(expect)
        got = np.column_stack([rows[k].astype(np.float64) for k in rows.dtype.names])
        np.testing.assert_array_equal(got[:, :6], e[:, :6])
        # float32 sums of float64 sums taken in another order: equal to float32 rounding (one ulp, 2**-23)
        np.testing.assert_allclose(got[:, 6:], e[:, 6:], rtol=2**-22)


def test_bigwig_spools_in_memory_or_on_disk_give_the_same_bytes(tmp_path, monkeypatch):
    """Index entries and zoom block entries stay in memory until a spool holds BUFFER rows, then go to a
    temporary file: both ways write the same file."""
    from ntk.io import tracks

    rng = np.random.default_rng(5)
    v = rng.random(400_000).astype(np.float32)
    out = []
    for buffer in (tracks._Spool.BUFFER, 7):
        monkeypatch.setattr(tracks._Spool, "BUFFER", buffer)
        w = BigWigWriter(tmp_path / f"s{buffer}.bw", [("c", v.size), ("d", 5)], zoom_levels=5)
        for a in range(0, v.size, 50_000):
            w.add("c", a, v[a:a + 50_000])
        w.add("d", 0, v[:5])
        w.close()
        out.append((tmp_path / f"s{buffer}.bw").read_bytes())
    assert out[0] == out[1]
