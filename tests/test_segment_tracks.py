"""ntk's streaming BigWig writer and bedGraph writer, read back with pyBigWig (libBigWig) as the reference."""
from __future__ import annotations

import io

import numpy as np
import pyBigWig
import pytest

import ntk.io.tracks as tracks
from ntk.io.tracks import BedGraphWriter, BigWigWriter


def write_random(path, sizes, rng, max_gap=3000, max_len=70000):
    """Random chunks with gaps on every contig; returns the expected per-base arrays (NaN = no value)."""
    data = {c: np.full(n, np.nan, np.float32) for c, n in sizes}
    w = BigWigWriter(path, sizes)
    for c, n in sizes:
        pos = int(rng.integers(0, 50))
        while pos < n:
            e = min(n, pos + int(rng.integers(1, max_len)))
            v = rng.random(e - pos).astype(np.float32)
            w.add(c, pos, v)
            data[c][pos:e] = v
            pos = e + int(rng.integers(0, max_gap))
    w.close()
    return data


def test_values_header_and_summary_read_back(tmp_path):
    rng = np.random.default_rng(1)
    sizes = [("chrB", 100_000), ("chrA", 2_500), ("empty", 0), ("c10", 300_000), ("x", 50)]
    data = write_random(tmp_path / "t.bw", sizes, rng)
    bw = pyBigWig.open(str(tmp_path / "t.bw"))
    assert list(bw.chroms().items()) == [(c, n) for c, n in sizes if n]  # header order kept, empty contig dropped
    allv = np.concatenate([v[~np.isnan(v)] for v in data.values()])
    h = bw.header()
    assert h["nBasesCovered"] == allv.size and h["nLevels"] >= 4
    assert abs(h["sumData"] - int(allv.astype(np.float64).sum())) <= 1
    for c, n in sizes:
        if n:
            got = np.asarray(bw.values(c, 0, n), np.float32)
            np.testing.assert_array_equal(got, data[c])  # NaN where nothing was written
            assert bw.stats(c, type="max", exact=True)[0] == float(np.nanmax(data[c]))  # a stored float32: exact
    iv = bw.intervals("chrA", 0, 2500)
    assert iv and all(e - s == 1 for s, e, _ in iv)
    bw.close()


def test_zoom_levels_hold_exact_bin_summaries(tmp_path):
    rng = np.random.default_rng(2)
    sizes = [("a", 120_000), ("b", 30_000)]
    write_random(tmp_path / "z.bw", sizes, rng, max_gap=5000)
    bw = pyBigWig.open(str(tmp_path / "z.bw"))
    used_zoom = False
    for c, n in sizes:
        for width in (128, 512, 8192):  # bins aligned to the zoom bins: zoom summaries must be exact
            m = n // width
            for typ in ("mean", "max", "min", "coverage", "std"):
                fast = np.array(bw.stats(c, 0, m * width, type=typ, nBins=m), dtype=float)
                exact = np.array(bw.stats(c, 0, m * width, type=typ, nBins=m, exact=True), dtype=float)
                np.testing.assert_allclose(fast, exact, rtol=1e-4, atol=1e-5, err_msg=f"{c} {width} {typ}")
        # unaligned bins come from the zoom levels (approximate), so the fast path really reads them
        fast = np.array(bw.stats(c, 0, n, type="mean", nBins=7), dtype=float)
        exact = np.array(bw.stats(c, 0, n, type="mean", nBins=7, exact=True), dtype=float)
        used_zoom |= not np.allclose(fast, exact, rtol=0, atol=1e-7)
    assert used_zoom
    bw.close()


def test_deep_index_trees(tmp_path, monkeypatch):
    monkeypatch.setattr(tracks, "BLOCK", 4)  # 4 children per node: several levels in both trees
    rng = np.random.default_rng(3)
    sizes = [(f"ctg{i:03d}{'_' * (i % 5)}", int(rng.integers(1, 6000))) for i in range(300)]
    data = write_random(tmp_path / "d.bw", sizes, rng, max_gap=10, max_len=3000)
    bw = pyBigWig.open(str(tmp_path / "d.bw"))
    assert list(bw.chroms().items()) == sizes
    for c, n in sizes[::17]:
        np.testing.assert_array_equal(np.asarray(bw.values(c, 0, n), np.float32), data[c])
    bw.close()


def test_empty_track_and_order_checks(tmp_path):
    w = BigWigWriter(tmp_path / "e.bw", [("a", 100), ("b", 50)])
    w.close()
    bw = pyBigWig.open(str(tmp_path / "e.bw"))
    assert bw.chroms() == {"a": 100, "b": 50} and np.isnan(bw.values("a", 0, 100)).all()
    bw.close()
    w = BigWigWriter(tmp_path / "o.bw", [("a", 100), ("b", 50)])
    w.add("b", 0, np.ones(10, np.float32))
    with pytest.raises(ValueError):
        w.add("a", 0, np.ones(10, np.float32))  # contig order
    with pytest.raises(ValueError):
        w.add("b", 45, np.ones(10, np.float32))  # beyond the contig end
    w.abort()


def test_bedgraph_merges_equal_neighbours_and_round_trips_float32():
    buf = io.BytesIO()
    w = BedGraphWriter(buf, digits=None)  # full float32 precision
    v = np.array([0.25, 0.25, 0.1, 1 / 3, 1e-8, 1e-8, 1.0], np.float32)
    w.add("chr2", 100, v)
    w.flush()  # the last line waits for a chunk that might continue it
    rows = [ln.split("\t") for ln in buf.getvalue().decode().splitlines()]
    assert [(r[0], int(r[1]), int(r[2])) for r in rows] == [("chr2", 100, 102), ("chr2", 102, 103), ("chr2", 103, 104),
                                                           ("chr2", 104, 106), ("chr2", 106, 107)]
    back = np.array([float(r[3]) for r in rows], np.float32)
    np.testing.assert_array_equal(back, v[[0, 2, 3, 4, 6]])


def test_bedgraph_rounding_merges_across_chunks_and_breaks_at_gaps():
    buf = io.BytesIO()
    w = BedGraphWriter(buf, digits=2)
    w.add("c", 0, np.array([0.101, 0.104, 0.2], np.float32))
    w.add("c", 3, np.array([0.199, 0.2, 0.5], np.float32))  # continues: 0.2 (rounded) merges across the chunks
    w.add("c", 10, np.array([0.5], np.float32))  # a gap (positions without a value) breaks the line
    w.add("d", 11, np.array([0.5], np.float32))  # another contig too
    w.flush()
    rows = [ln.split("\t") for ln in buf.getvalue().decode().splitlines()]
    assert rows == [["c", "0", "2", "0.10"], ["c", "2", "5", "0.20"], ["c", "5", "6", "0.50"],
                    ["c", "10", "11", "0.50"], ["d", "11", "12", "0.50"]]
