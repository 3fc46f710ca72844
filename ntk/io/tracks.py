"""Per-nucleotide signal tracks: BigWig files and bedGraph streams, written chunk by chunk.

Values arrive as contiguous chunks ``add(chrom, start, values)`` (0-based start, one float per nucleotide) in
genome order: contigs in header (FASTA index) order, positions increasing. Positions never given stay empty
(no value) in the output; nothing is padded or interpolated.

BigWig files are float32, with the header (contig names and sizes, in order) taken from the FASTA index, and
written through pyBigWig (libBigWig) as fixed-step sections.

Zoom levels: libBigWig computes them at close time entirely in memory (about 3 bytes per covered nucleotide of
the genome plus 12 bytes per nucleotide of the largest contig), which breaks the flat-memory rule at genome
scale. They are therefore off unless ``zoom_levels > 0`` is asked for (``ntk segment --zoom-levels N``);
without them a file is complete and valid, and readers compute summaries from the full-resolution data.
"""
from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np

from ..errors import NtkError


class BigWigWriter:
    """One float32 BigWig track; ``add`` chunks in genome order, then ``close``."""

    def __init__(self, path: str | os.PathLike, chrom_sizes: list[tuple[str, int]], zoom_levels: int = 0):
        import pyBigWig

        self.path = str(path)
        self._bw = pyBigWig.open(self.path, "w")
        if self._bw is None:
            raise NtkError(f"{self.path}: cannot create BigWig file")
        sizes = [(c, int(n)) for c, n in chrom_sizes if int(n) > 0]  # a BigWig cannot declare an empty contig
        self._bw.addHeader(sizes, maxZooms=int(zoom_levels))
        self._rank = {c: i for i, (c, _) in enumerate(sizes)}
        self._sizes = dict(sizes)
        self._last = (-1, 0)  # (contig rank, end) of the last chunk: chunks must come in genome order
        self.n_values = 0

    def add(self, chrom: str, start: int, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        if not values.size:
            return
        rank = self._rank.get(chrom)
        if rank is None:
            raise ValueError(f"{self.path}: contig {chrom!r} is not in the BigWig header")
        end = start + values.size
        if (rank, start) < self._last or end > self._sizes[chrom]:
            raise ValueError(f"{self.path}: chunk {chrom}:{start}-{end} is out of genome order or beyond the contig")
        self._bw.addEntries(chrom, int(start), values=values, span=1, step=1)
        self._last = (rank, end)
        self.n_values += values.size

    def close(self) -> None:
        if self._bw is not None:
            self._bw.close()
            self._bw = None


class BedGraphWriter:
    """bedGraph lines (``chrom start end value``, 0-based half-open) to a binary stream; equal neighbouring
    values within a chunk are merged into one line. Values are printed as the shortest text that reads back to
    the same float32."""

    def __init__(self, stream: BinaryIO):
        self._out = stream

    def add(self, chrom: str, start: int, values: np.ndarray) -> None:
        import polars as pl

        v = np.asarray(values, dtype=np.float32)
        if not v.size:
            return
        cut = np.flatnonzero(v[1:] != v[:-1]) + 1
        starts = np.concatenate(([0], cut))
        ends = np.concatenate((cut, [v.size]))
        df = pl.DataFrame({
            "chrom": pl.Series([chrom], dtype=pl.String).extend_constant(chrom, starts.size - 1),
            "start": starts + start,
            "end": ends + start,
            "value": v[starts],
        })
        df.write_csv(self._out, separator="\t", include_header=False)

    def flush(self) -> None:
        self._out.flush()
