"""Segment/tracks run outputs: kept window parts, in genome order -> contiguous chunks -> one float32 BigWig per
feature, the segments BED (bgzip + tabix) and optionally one feature as bedGraph on a stream
(:class:`TrackOutputs`; used by ``pipelines/segment.py`` and ``pipelines/merge.py``)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from .segments import SegmentsBedWriter
from .tracks import DEFAULT_BEDGRAPH_DIGITS, BedGraphWriter, BigWigWriter

CHUNK = 1 << 18  # nt per contiguous chunk handed to the writers


class TrackOutputs:
    """Kept window parts -> contiguous chunks -> BigWig per feature, segments BED, optional bedGraph.

    The BigWig files of different features are written in parallel threads when the machine has cores to spare
    (zlib releases the GIL): with a fast accelerator, compressing 14 float32 tracks is the heaviest host work."""

    def __init__(self, out_dir: Path | None, chrom_sizes: list[tuple[str, int]], features: list[str],
                 threshold: float, min_length: int, bedgraph_index: int | None = None,
                 bedgraph_stream: BinaryIO | None = None, zoom_levels: int = 10, segments: bool = True,
                 merge_gap: int = 0, bedgraph_digits: int | None = DEFAULT_BEDGRAPH_DIGITS):
        self.features = features
        self.bigwigs: list[BigWigWriter] = []
        self.segments: SegmentsBedWriter | None = None
        self.bedgraph = BedGraphWriter(bedgraph_stream, bedgraph_digits) if bedgraph_index is not None else None
        self.bedgraph_index = bedgraph_index
        if out_dir is not None:
            self.bigwigs = [BigWigWriter(out_dir / f"{f}.bw", chrom_sizes, zoom_levels) for f in features]
            if segments:
                self.segments = SegmentsBedWriter(out_dir / "segments.bed.gz", features, threshold, min_length,
                                                  merge_gap)
        workers = min(len(self.bigwigs), (os.cpu_count() or 1) - 2)  # cores left after the model and the reader
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ntk-bigwig") if workers > 1 else None
        self._parts: list[np.ndarray] = []
        # positions per flushed chunk: fewer when there are many outputs (NTv3 tracks: hundreds per species)
        self._chunk = max(1 << 12, CHUNK * 16 // max(16, len(features)))
        self._chrom: str | None = None
        self._start = self._end = 0
        self.bp_written = 0

    def add(self, chrom: str, start: int, values: np.ndarray) -> None:
        """Values [n, F] for positions start..start+n; calls come in genome order."""
        if self._parts and (chrom != self._chrom or start != self._end or self._end - self._start >= self._chunk):
            self.flush()
        if not self._parts:
            self._chrom, self._start, self._end = chrom, start, start
        self._parts.append(values)
        self._end += values.shape[0]

    def flush(self) -> None:
        if not self._parts:
            return
        vals = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = []
        chrom, start = self._chrom, self._start
        pending = self._each_bigwig(lambda f, bw: bw.add(chrom, start, vals[:, f]))
        if self.segments is not None:
            self.segments.add(chrom, start, vals)
        if self.bedgraph is not None:
            self.bedgraph.add(chrom, start, vals[:, self.bedgraph_index])
        pending()
        self.bp_written += vals.shape[0]

    def _each_bigwig(self, fn: Callable[[int, BigWigWriter], None]) -> Callable[[], None]:
        """Run ``fn(feature_index, writer)`` for every BigWig (in the pool if any); returns a wait function
        that re-raises the first failure."""
        if self._pool is None:
            for f, bw in enumerate(self.bigwigs):
                fn(f, bw)
            return lambda: None
        futures = [self._pool.submit(fn, f, bw) for f, bw in enumerate(self.bigwigs)]

        def wait() -> None:
            for fu in futures:
                fu.result()
        return wait

    def close(self) -> None:
        self.flush()
        self._each_bigwig(lambda f, bw: bw.close())()
        if self.segments is not None:
            self.segments.close()
        if self.bedgraph is not None:
            self.bedgraph.flush()
        if self._pool is not None:
            self._pool.shutdown()

    def abort(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for bw in self.bigwigs:
            bw.abort()
        if self.segments is not None:
            self.segments.abort()
