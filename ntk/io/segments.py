"""Calling segments from per-nucleotide probabilities and writing them as a bgzipped, tabix-indexed BED.

A segment of a feature is a maximal stretch of consecutive positions with probability >= ``threshold``, where
stretches separated by at most ``merge_gap`` positions below the threshold are joined into one (``merge_gap``
0: no joining), that is at least ``min_length`` nt long (after joining). Positions without a value (N runs,
regions not processed) always break a segment. Joining keeps a probability that hovers around the threshold
from fragmenting one exon into several calls (``I 1782 2402 exon`` + ``I 2403 2406 exon``). Calls are made while
values stream in (chunk by chunk, in genome order); a segment that may continue (it touches the chunk end, or
ends less than ``merge_gap`` positions before it) is carried over to the next chunk when that chunk starts
exactly where the previous one ended.

BED columns (0-based half-open): ``chrom start end feature score . mean_prob max_prob`` where ``mean_prob`` is
the mean over every position of ``[start, end)`` (joined gaps included) and ``score = round(1000 *
mean_prob)`` (0-1000, as BED viewers expect). Lines are sorted by contig (in the order the values arrive, i.e.
FASTA order), then start, end and feature order; the file is bgzipped and indexed with tabix (``.tbi``) by pysam.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

DEFAULT_MERGE_GAP = 10  # nt: joins threshold flicker, never an intron (>= 30 nt in the organisms SegmentNT covers)


@dataclass
class _Open:
    start: int
    end: int
    total: float
    peak: float
    gap: int = 0  # positions below the threshold seen after ``end`` (a gap that may still be joined)
    gap_total: float = 0.0


class SegmentCaller:
    """Streaming threshold caller for one feature. ``add`` returns the segments completed so far as arrays
    ``(starts, ends, means, maxs)``; ``finish`` closes the open one."""

    def __init__(self, threshold: float, min_length: int = 1, merge_gap: int = 0):
        self.threshold = float(threshold)
        self.min_length = max(int(min_length), 1)
        self.merge_gap = max(int(merge_gap), 0)
        self._chrom: str | None = None
        self._open: _Open | None = None

    @property
    def open_start(self) -> int | None:
        return None if self._open is None else self._open.start

    def add(self, chrom: str, start: int, values: np.ndarray) -> tuple[np.ndarray, ...]:
        v = np.asarray(values, dtype=np.float32)
        G = self.merge_gap
        done = []
        o = self._open
        if o is not None and (chrom != self._chrom or start != o.end + o.gap):
            done.append(self._close())
        self._chrom = chrom
        if not v.size:
            return self._filter(done)
        hit = v >= self.threshold
        d = np.diff(np.concatenate(([0], hit.view(np.int8), [0])))
        s = np.flatnonzero(d == 1)
        e = np.flatnonzero(d == -1)
        if G and s.size > 1:  # join runs separated by <= G positions below the threshold
            apart = s[1:] - e[:-1] > G
            s, e = s[np.concatenate(([True], apart))], e[np.concatenate((apart, [True]))]
        # float64 sums of float32 values: exact (fewer than 2**29 terms), so chunking never changes a mean
        csum = np.concatenate(([0.0], np.cumsum(v, dtype=np.float64)))
        totals = csum[e] - csum[s]
        # max over each [s, e): reduceat over interleaved bounds (e <= len(v) < len(padded))
        padded = np.append(v, np.float32(0))
        peaks = np.maximum.reduceat(padded, np.column_stack((s, e)).ravel())[::2].astype(np.float64) \
            if s.size else np.zeros(0)
        starts, ends = s.astype(np.int64) + start, e.astype(np.int64) + start
        o = self._open
        if o is not None:
            if s.size and o.gap + int(s[0]) <= G:  # the open segment continues (across <= G gap positions)
                starts[0] = o.start
                totals[0] = o.total + o.gap_total + csum[e[0]]
                peaks[0] = max(o.peak, peaks[0])
                self._open = None
            elif not s.size and o.gap + v.size <= G:  # all below the threshold, but the gap may still be joined
                o.gap += v.size
                o.gap_total += float(csum[-1])
                return self._filter(done)
            else:
                done.append(self._close())
        if s.size and v.size - int(e[-1]) <= G:  # the last run may continue into the next chunk: keep it open
            tail = v.size - int(e[-1])
            self._open = _Open(int(starts[-1]), int(ends[-1]), float(totals[-1]), float(peaks[-1]), tail,
                               float(csum[-1] - csum[e[-1]]))
            starts, ends, totals, peaks = starts[:-1], ends[:-1], totals[:-1], peaks[:-1]
        if starts.size:
            done.append((starts, ends, totals / (ends - starts), peaks))
        return self._filter(done)

    def finish(self) -> tuple[np.ndarray, ...]:
        return self._filter([self._close()] if self._open is not None else [])

    def _close(self) -> tuple[np.ndarray, ...]:
        o, self._open = self._open, None
        n = o.end - o.start
        return (np.array([o.start]), np.array([o.end]), np.array([o.total / n]), np.array([o.peak]))

    def _filter(self, parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        if not parts:
            return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
        s, e, mean, mx = (np.concatenate([p[i] for p in parts]) for i in range(4))
        keep = (e - s) >= self.min_length
        return s[keep].astype(np.int64), e[keep].astype(np.int64), mean[keep], mx[keep]


class SegmentsBedWriter:
    """Segments of several features from ``add(chrom, start, values[n, F])`` chunks, written in sorted order as
    they become final, to ``path`` (bgzip) + ``path.tbi`` on ``close``."""

    def __init__(self, path: str | os.PathLike, features: list[str], threshold: float = 0.5, min_length: int = 1,
                 merge_gap: int = 0):
        import pysam

        self.path = str(path)
        self.features = list(features)
        self._callers = [SegmentCaller(threshold, min_length, merge_gap) for _ in self.features]
        self._out = pysam.BGZFile(self.path, "wb")
        self._chrom: str | None = None
        self._pending: list[np.ndarray] = []  # per-feature completed calls not yet written: rows (s, e, f, mean, max)
        self.n_segments = 0

    def add(self, chrom: str, start: int, values: np.ndarray) -> None:
        values = np.asarray(values)
        if chrom != self._chrom:
            self._finish_contig()
            self._chrom = chrom
        for f, caller in enumerate(self._callers):
            self._collect(f, caller.add(chrom, start, values[:, f]))
        # everything starting before the earliest still-open segment (or this chunk's end) is final
        opens = [c.open_start for c in self._callers if c.open_start is not None]
        self._write(min(opens + [start + values.shape[0]]))

    def close(self) -> None:
        import pysam

        if self._out is None:
            return
        self._finish_contig()
        self._out.close()
        self._out = None
        pysam.tabix_index(self.path, preset="bed", force=True)

    def abort(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    # -- internals ---------------------------------------------------------------------------------
    def _collect(self, f: int, calls: tuple[np.ndarray, ...]) -> None:
        s, e, mean, mx = calls
        if s.size:
            self._pending.append(np.column_stack((s, e, np.full(s.size, f), mean, mx)))

    def _finish_contig(self) -> None:
        if self._chrom is None:
            return
        for f, caller in enumerate(self._callers):
            self._collect(f, caller.finish())
        self._write(None)

    def _write(self, watermark: int | None) -> None:
        if not self._pending:
            return
        rows = np.concatenate(self._pending)
        if watermark is not None:
            later = rows[:, 0] >= watermark
            self._pending = [rows[later]] if later.any() else []
            rows = rows[~later]
        else:
            self._pending = []
        if not rows.size:
            return
        rows = rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]
        self._out.write(_format_bed(self._chrom, rows, self.features))
        self.n_segments += rows.shape[0]


def _format_bed(chrom: str, rows: np.ndarray, features: list[str]) -> bytes:
    """BED lines for rows (start, end, feature index, mean, max): built column-wise in numpy as one character
    matrix (no per-row Python, no polars import in a writer process); the same bytes as
    :func:`_format_bed_polars`, which formats whatever this fast path does not cover."""
    n = rows.shape[0]
    starts, ends = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
    means, maxs = rows[:, 3], rows[:, 4]
    probs = rows[:, 3:5]
    if not (np.isfinite(probs).all() and not np.signbit(probs).any() and (probs < 1e4).all() and (starts >= 0).all()):
        return _format_bed_polars(chrom, rows, features)
    score = np.clip(np.rint(means * 1000), 0, 1000).astype(np.int64)
    names = [f.encode() for f in features]
    width = max(len(b) for b in names)
    table = np.zeros((len(names), width + 1), np.uint8)
    table_keep = np.zeros((len(names), width + 1), bool)
    for k, b in enumerate(names):
        table[k, :len(b)] = np.frombuffer(b, np.uint8)
        table[k, len(b)] = 9  # tab
        table_keep[k, :len(b) + 1] = True
    feat = rows[:, 2].astype(np.int64)
    cols = [_const(chrom.encode() + b"\t", n), *_int_text(starts), _const(b"\t", n), *_int_text(ends),
            _const(b"\t", n), (table[feat], table_keep[feat]), *_int_text(score), _const(b"\t.\t", n),
            *_fixed4_text(means), _const(b"\t", n), *_fixed4_text(maxs), _const(b"\n", n)]
    chars = np.concatenate([c for c, _ in cols], axis=1)
    keep = np.concatenate([np.broadcast_to(k, c.shape) for c, k in cols], axis=1)
    return chars[keep].tobytes()


def _const(text: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    row = np.frombuffer(text, np.uint8)
    return np.broadcast_to(row, (n, row.size)), np.ones((1, row.size), bool)


def _int_text(x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decimal digits of non-negative integers, right-aligned (leading zeros masked out)."""
    width = len(str(int(x.max()))) if x.size else 1
    p = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = ((x[:, None] // p) % 10 + 48).astype(np.uint8)
    keep = x[:, None] >= p
    keep[:, -1] = True
    return [(digits, keep)]


def _fixed4_text(x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``'%.4f' % v`` for every 0 <= v < 1e4: v * 1e4 rounded to the nearest integer, ties (in the exact binary
    value) to even. The float64 product is off by at most 1e-8 from the exact one, so it decides the rounding
    except within 1e-6 of a tie; those few values are formatted by Python (correctly rounded)."""
    y = x * 1e4
    fl = np.floor(y)
    frac = y - fl
    q = (fl + (frac > 0.5)).astype(np.int64)
    near = np.flatnonzero(np.abs(frac - 0.5) < 1e-6)
    for i in near:
        q[i] = int(("%.4f" % float(x[i])).replace(".", ""))
    whole, part = q // 10000, q % 10000
    (wd, wk), = _int_text(whole)
    p = 10 ** np.arange(3, -1, -1, dtype=np.int64)
    frac_digits = ((part[:, None] // p) % 10 + 48).astype(np.uint8)
    dot = np.full((x.size, 1), 46, np.uint8)
    return [(wd, wk), (dot, np.ones((1, 1), bool)), (frac_digits, np.ones((1, 4), bool))]


def _format_bed_polars(chrom: str, rows: np.ndarray, features: list[str]) -> bytes:
    """BED lines for rows (start, end, feature index, mean, max), formatted column-wise by polars (the
    reference for :func:`_format_bed`, and its path for values outside [0, 1e4))."""
    import io

    import polars as pl

    n = rows.shape[0]
    means = rows[:, 3]
    df = pl.DataFrame({
        "chrom": pl.Series([chrom], dtype=pl.String).extend_constant(chrom, n - 1),
        "start": rows[:, 0].astype(np.int64),
        "end": rows[:, 1].astype(np.int64),
        "feature": pl.Series(features, dtype=pl.String).gather(rows[:, 2].astype(np.int64)),
        "score": np.clip(np.rint(means * 1000), 0, 1000).astype(np.int64),
        "strand": pl.Series(["."], dtype=pl.String).extend_constant(".", n - 1),
        "mean_prob": means,
        "max_prob": rows[:, 4],
    })
    buf = io.BytesIO()
    df.write_csv(buf, separator="\t", include_header=False, float_precision=4)
    return buf.getvalue()
