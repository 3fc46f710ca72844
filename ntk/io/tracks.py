"""Per-nucleotide signal tracks: BigWig files and bedGraph streams, written chunk by chunk.

Values arrive as contiguous chunks ``add(chrom, start, values)`` (0-based start, one float per nucleotide) in
genome order: contigs in header (FASTA index) order, positions increasing. Positions never given stay empty
(no value) in the output; nothing is padded or interpolated.

BigWig (format of Kent et al. 2010, as written by UCSC's wigToBigWig and libBigWig; read back with pyBigWig in
the tests) is written here with numpy + zlib, streaming, because libBigWig (pyBigWig's writer) builds zoom
levels at close time entirely in memory (~3 bytes per covered nucleotide of the genome plus 12 per nucleotide of
the largest contig). Here memory stays flat:

- data: fixed-step float32 sections of up to ``SECTION`` values, zlib-compressed, written as chunks arrive
  (Huffman coding only: float32 values hold almost no repeated strings, so deflate's string matching costs 25%
  more time for a 0.3% larger block; any zlib reader inflates it);
- zoom levels (reductions 32, 128, 512, ... bp, up to ``zoom_levels``, only those not longer than the longest
  contig): per-bin summaries (valid count, min, max, sum, sum of squares) computed with numpy per chunk, carried
  across chunk boundaries, compressed in blocks (zlib level 1) as soon as a block is full (the work streams
  beside the model instead of piling up at close), spooled to temporary files and copied into the file at close;
- whole-file summary (bases, min, max, sum, sum of squares): float64 pairwise sums of each chunk (numpy's
  ``sum``, deterministic on any machine; no BLAS ``dot``, whose thread wake-ups cost 50x the sum);
- indexes: the chromosome B+ tree (keys sorted, ids in header order) and the R-trees of the data and of each
  zoom level, built bottom-up at close from spooled (file-backed) entries; only the upper tree levels (1/256 of
  the entries) are held in memory.
"""
from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zlib
from typing import BinaryIO

import numpy as np

from ..errors import NtkError

BIGWIG_MAGIC = 0x888FFC26
BPT_MAGIC = 0x78CA8C91  # chromosome B+ tree
CIR_MAGIC = 0x2468ACE0  # R-tree index
SECTION = 1024  # values per data section
ZOOM_ITEMS = 1024  # zoom records per block
BLOCK = 256  # children per index node
FIRST_ZOOM = 32  # bp per bin of the first zoom level; each next level is 4x coarser
ZLEVEL = 6
# zoom blocks: zlib level 1, a third of level 6's CPU for blocks 0.2% larger (sorted summary records of the
# embedded model's exon track: 16 vs 51 ms per Mbp at 32 bp bins, 0.603 vs 0.602 of the raw bytes)
ZOOM_ZLEVEL = 1

_ENTRY = np.dtype([("c0", "<u4"), ("s", "<u4"), ("c1", "<u4"), ("e", "<u4"), ("off", "<u8"), ("size", "<u8")])
_SECTION_HEADER = np.dtype([("chrom", "<u4"), ("start", "<u4"), ("end", "<u4"), ("step", "<u4"), ("span", "<u4"),
                            ("type", "u1"), ("reserved", "u1"), ("count", "<u2")])  # bigWig fixed-step, 24 bytes
_ZREC = np.dtype([("chrom", "<u4"), ("start", "<u4"), ("end", "<u4"), ("valid", "<u4"),
                  ("min", "<f4"), ("max", "<f4"), ("sum", "<f4"), ("sumsq", "<f4")])


class _Spool:
    """An append-only temporary file of numpy records, read back in order in blocks; the file is created only
    once more than ``BUFFER`` records are held (a small spool never holds a file descriptor)."""

    BUFFER = 65536

    def __init__(self, dtype: np.dtype, directory: str | None):
        self.dtype = dtype
        self._directory = directory
        self._f: BinaryIO | None = None
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self.n = 0

    def append(self, rows: np.ndarray) -> None:
        if rows.size:
            self._buf.append(rows)
            self._buffered += rows.size
            self.n += rows.size
            if self._buffered >= self.BUFFER:
                self._drain()

    def _drain(self) -> None:
        if self._f is None:
            self._f = tempfile.TemporaryFile(dir=self._directory)
        for b in self._buf:
            self._f.write(b.tobytes())
        self._buf, self._buffered = [], 0

    def blocks(self, size: int):
        if self._f is None:  # everything is still in memory
            rows = np.concatenate(self._buf) if self._buf else np.zeros(0, self.dtype)
            for a in range(0, rows.size, size):
                yield rows[a:a + size]
            return
        self._drain()
        self._f.flush()
        self._f.seek(0)
        left = self.n
        while left > 0:
            k = min(size, left)
            yield np.frombuffer(self._f.read(k * self.dtype.itemsize), dtype=self.dtype)
            left -= k

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        self._buf = []


class _ZoomLevel:
    """Summaries of one zoom level: the bin being filled plus the finished ones spooled to disk."""

    def __init__(self, reduction: int, directory: str | None):
        self.reduction = reduction
        self.n = 0  # finished records
        self.open: np.ndarray | None = None  # one _ZREC row: the last bin, maybe continued by the next chunk
        # finished records are compressed in blocks of ZOOM_ITEMS as soon as a block is full (while values stream
        # in, beside the model, rather than all at close); the blocks wait in a temporary file
        self._rows: list[np.ndarray] = []  # finished records not yet in a block
        self._buffered = 0
        self._directory = directory
        self.data: BinaryIO | None = None  # created with the first block
        self.data_size = 0
        self.blocks = _Spool(_ENTRY, directory)  # one per block; ``off`` relative to the start of ``data``

    def add(self, chrom_id: int, chrom_len: int, part: np.ndarray) -> None:
        """``part``: _ZREC rows of finer bins (sorted, one contig), aggregated here into this level's bins."""
        r = self.reduction
        bins = part["start"] // r
        cut = np.flatnonzero(np.diff(bins)) + 1
        first = np.concatenate(([0], cut))
        rec = np.zeros(first.size, _ZREC)
        rec["chrom"] = chrom_id
        rec["start"] = bins[first] * r
        rec["end"] = np.minimum(bins[first] * r + r, chrom_len)
        rec["valid"] = np.add.reduceat(part["valid"], first)
        rec["min"] = np.minimum.reduceat(part["min"], first)
        rec["max"] = np.maximum.reduceat(part["max"], first)
        rec["sum"] = np.add.reduceat(part["sum"].astype(np.float64), first)
        rec["sumsq"] = np.add.reduceat(part["sumsq"].astype(np.float64), first)
        o = self.open
        if o is not None:
            if o["chrom"] == rec["chrom"][0] and o["start"] == rec["start"][0]:  # the same bin goes on
                rec["valid"][0] += o["valid"]
                rec["min"][0] = min(rec["min"][0], o["min"])
                rec["max"][0] = max(rec["max"][0], o["max"])
                rec["sum"][0] += o["sum"]
                rec["sumsq"][0] += o["sumsq"]
            else:
                self._finished(np.array([o], _ZREC))
        self._finished(rec[:-1])
        self.open = rec[-1].copy()

    def finish(self) -> None:
        if self.open is not None:
            self._finished(np.array([self.open], _ZREC))
            self.open = None
        self._compress(final=True)

    def _finished(self, rows: np.ndarray) -> None:
        if rows.size:
            self._rows.append(rows)
            self._buffered += rows.size
            self.n += rows.size
            if self._buffered >= ZOOM_ITEMS:
                self._compress(final=False)

    def _compress(self, final: bool) -> None:
        """Compress the full blocks of finished records (and, if ``final``, the last partial one)."""
        if not self._rows:
            return
        rows = np.concatenate(self._rows) if len(self._rows) > 1 else self._rows[0]
        k = rows.size if final else rows.size // ZOOM_ITEMS * ZOOM_ITEMS
        entries = np.zeros(-(-k // ZOOM_ITEMS), _ENTRY)
        out = []
        for j, a in enumerate(range(0, k, ZOOM_ITEMS)):
            rec = rows[a:a + ZOOM_ITEMS]
            block = zlib.compress(rec.tobytes(), ZOOM_ZLEVEL)
            entries[j] = (rec["chrom"][0], rec["start"][0], rec["chrom"][-1], rec["end"][-1], self.data_size,
                          len(block))
            self.data_size += len(block)
            out.append(block)
        if out:
            if self.data is None:
                self.data = tempfile.TemporaryFile(dir=self._directory)
            self.data.write(b"".join(out))
            self.blocks.append(entries)
        rest = rows[k:]
        self._rows, self._buffered = ([rest] if rest.size else []), rest.size

    def close(self) -> None:
        if self.data is not None:
            self.data.close()
        self.blocks.close()


def _rtree_levels(n_leaf_nodes: int) -> list[int]:
    """Node counts per level, leaves first, up to a single root."""
    levels = [n_leaf_nodes]
    while levels[-1] > 1:
        levels.append(-(-levels[-1] // BLOCK))
    return levels


def _write_rtree(f: BinaryIO, entries: _Spool, items_per_slot: int, end_offset: int) -> int:
    """Write an R-tree (cirTree) over the spooled data/zoom block entries; returns its file offset."""
    n = entries.n
    offset = f.tell()
    if n == 0:
        f.write(struct.pack("<IIQIIIIQII", CIR_MAGIC, BLOCK, 0, 0, 0, 0, 0, end_offset, items_per_slot, 0))
        f.write(struct.pack("<BBH", 1, 0, 0))
        return offset
    # bounds of each leaf node (BLOCK entries), then of each upper node, kept in memory (n / BLOCK rows)
    leaf_bounds = []
    first = last = None
    for blk in entries.blocks(BLOCK):
        leaf_bounds.append((blk["c0"][0], blk["s"][0], blk["c1"][-1], blk["e"][-1]))
        first = first or (int(blk["c0"][0]), int(blk["s"][0]))
        last = (int(blk["c1"][-1]), int(blk["e"][-1]))
    counts = _rtree_levels(len(leaf_bounds))
    bounds = [np.array(leaf_bounds, dtype=np.uint32).reshape(-1, 4)]
    for _ in counts[1:]:
        b = bounds[-1]
        heads = np.arange(0, b.shape[0], BLOCK)
        tails = np.minimum(heads + BLOCK, b.shape[0]) - 1
        bounds.append(np.column_stack((b[heads, 0], b[heads, 1], b[tails, 2], b[tails, 3])))
    leaf_size, inner_size = 4 + BLOCK * 32, 4 + BLOCK * 24
    f.write(struct.pack("<IIQIIIIQII", CIR_MAGIC, BLOCK, n, first[0], first[1], last[0], last[1], end_offset,
                        items_per_slot, 0))
    # levels are written root first; level k's node j starts at level_start[k] + j * node size
    top = len(counts) - 1
    level_start = {}
    pos = f.tell()
    for k in range(top, -1, -1):
        level_start[k] = pos
        pos += counts[k] * (leaf_size if k == 0 else inner_size)
    for k in range(top, 0, -1):
        child = bounds[k - 1]
        child_size = leaf_size if k == 1 else inner_size
        for j in range(counts[k]):
            items = child[j * BLOCK:(j + 1) * BLOCK]
            idx = np.arange(j * BLOCK, j * BLOCK + items.shape[0], dtype=np.uint64)
            rows = np.zeros(BLOCK, dtype=[("b", "<u4", 4), ("child", "<u8")])
            rows["b"][:items.shape[0]] = items
            rows["child"][:items.shape[0]] = level_start[k - 1] + idx * child_size
            f.write(struct.pack("<BBH", 0, 0, items.shape[0]) + rows.tobytes())
    for blk in entries.blocks(BLOCK):
        rows = np.zeros(BLOCK, _ENTRY)
        rows[:blk.size] = blk
        f.write(struct.pack("<BBH", 1, 0, blk.size) + rows.tobytes())
    return offset


def _write_chrom_tree(f: BinaryIO, sizes: list[tuple[str, int]]) -> None:
    """B+ tree of contig names (sorted by bytes, as searches need) -> (id in header order, length)."""
    keys = [c.encode() for c, _ in sizes]
    key_size = max([len(k) for k in keys] + [1])
    items = sorted((k, i, n) for i, (k, (_, n)) in enumerate(zip(keys, sizes)))
    bs = max(1, min(len(items), BLOCK))
    node_size = 4 + bs * (key_size + 8)
    f.write(struct.pack("<IIIIQQ", BPT_MAGIC, bs, key_size, 8, len(items), 0))
    counts = _rtree_levels(-(-len(items) // bs)) if items else [1]
    # first key of every node, per level (leaves first)
    firsts = [[items[j][0] for j in range(0, len(items), bs)] or [b""]]
    for _ in counts[1:]:
        firsts.append(firsts[-1][::bs])
    top = len(counts) - 1
    level_start, pos = {}, f.tell()
    for k in range(top, -1, -1):
        level_start[k] = pos
        pos += counts[k] * node_size
    pad_item = b"\0" * (key_size + 8)
    for k in range(top, 0, -1):
        child_keys = firsts[k - 1]
        for j in range(counts[k]):
            chunk = child_keys[j * bs:(j + 1) * bs]
            body = b"".join(key.ljust(key_size, b"\0") + struct.pack("<Q", level_start[k - 1] + (j * bs + i) * node_size)
                            for i, key in enumerate(chunk))
            f.write(struct.pack("<BBH", 0, 0, len(chunk)) + body + pad_item * (bs - len(chunk)))
    for j in range(counts[0]):
        chunk = items[j * bs:(j + 1) * bs]
        body = b"".join(k.ljust(key_size, b"\0") + struct.pack("<II", i, n) for k, i, n in chunk)
        f.write(struct.pack("<BBH", 1, 0, len(chunk)) + body + pad_item * (bs - len(chunk)))


class BigWigWriter:
    """One float32 BigWig track; ``add`` chunks in genome order, then ``close`` (writes zooms and indexes)."""

    def __init__(self, path: str | os.PathLike, chrom_sizes: list[tuple[str, int]], zoom_levels: int = 10):
        self.path = str(path)
        sizes = [(c, int(n)) for c, n in chrom_sizes if int(n) > 0]  # an empty contig cannot hold data
        if any(n >= 2**32 for _, n in sizes):
            raise NtkError(f"{self.path}: contigs of 4 Gbp or more cannot be written to BigWig")
        self._ids = {c: i for i, (c, _) in enumerate(sizes)}
        self._sizes = dict(sizes)
        self._lengths = [n for _, n in sizes]
        longest = max([n for _, n in sizes] + [1])
        reductions = [FIRST_ZOOM * 4**k for k in range(max(int(zoom_levels), 0))]
        self._reductions = [r for r in reductions if r <= longest] or reductions[:1]
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            self._f = open(self.path, "wb")
        except OSError as e:
            raise NtkError(f"{self.path}: cannot create BigWig file ({e.strerror})") from None
        self._entries = _Spool(_ENTRY, directory)
        self._zooms = [_ZoomLevel(r, directory) for r in self._reductions]
        self._last = (-1, 0)
        self._stats = [0, np.inf, -np.inf, 0.0, 0.0]  # bases, min, max, sum, sum of squares
        f = self._f
        f.write(b"\0" * (64 + 24 * len(self._zooms)))  # header and zoom headers, filled in at close
        self._summary_offset = f.tell()
        f.write(b"\0" * 40)
        self._chrom_tree_offset = f.tell()
        _write_chrom_tree(f, sizes)
        self._data_offset = f.tell()
        f.write(b"\0" * 8)  # number of data sections, filled in at close
        self.n_values = 0

    def add(self, chrom: str, start: int, values: np.ndarray) -> None:
        v = np.ascontiguousarray(values, dtype=np.float32)
        if not v.size:
            return
        cid = self._ids.get(chrom)
        if cid is None:
            raise ValueError(f"{self.path}: contig {chrom!r} is not in the BigWig header")
        end = start + v.size
        if (cid, start) < self._last or end > self._sizes[chrom] or start < 0:
            raise ValueError(f"{self.path}: chunk {chrom}:{start}-{end} is out of genome order or beyond the contig")
        self._last = (cid, end)
        self._write_sections(cid, start, v)
        v64 = v.astype(np.float64)
        sq = v64 * v64  # exact: a float32 squared fits a float64
        lo, hi = self._add_zooms(cid, start, v, v64, sq)
        s = self._stats
        s[0] += v.size
        s[1], s[2] = min(s[1], lo), max(s[2], hi)
        s[3] += float(v64.sum())
        # numpy's pairwise sum, as for s[3]: not np.dot, whose BLAS threads (woken per call: ~7 ms of CPU per
        # 262,144 values on 2 cores, 50x the sum) also made the last bits depend on the machine's core count
        s[4] += float(sq.sum())
        self.n_values += v.size

    def _write_sections(self, cid: int, start: int, v: np.ndarray) -> None:
        """Sections of ``SECTION`` values: headers for all at once, one zlib stream each, one write."""
        f = self._f
        n = v.size
        n_sec = -(-n // SECTION)
        s = start + np.arange(n_sec, dtype=np.int64) * SECTION
        e = np.minimum(s + SECTION, start + n)
        head = np.zeros(n_sec, _SECTION_HEADER)
        head["chrom"] = cid
        head["start"] = s
        head["end"] = e
        head["step"] = head["span"] = 1
        head["type"] = 3
        head["count"] = e - s
        hb, vb = head.tobytes(), v.tobytes()
        hs, vs = _SECTION_HEADER.itemsize, SECTION * 4
        compressobj = zlib.compressobj
        blocks = []
        for i in range(n_sec):
            z = compressobj(ZLEVEL, zlib.DEFLATED, 15, 8, zlib.Z_HUFFMAN_ONLY)
            blocks.append(z.compress(hb[i * hs:(i + 1) * hs] + vb[i * vs:(i + 1) * vs]) + z.flush())
        sizes = np.fromiter(map(len, blocks), np.uint64, n_sec)
        rows = np.zeros(n_sec, _ENTRY)
        rows["c0"] = rows["c1"] = cid
        rows["s"] = s
        rows["e"] = e
        rows["size"] = sizes
        rows["off"] = f.tell() + np.cumsum(sizes) - sizes
        f.write(b"".join(blocks))
        self._entries.append(rows)

    def _add_zooms(self, cid: int, start: int, v: np.ndarray, v64: np.ndarray, sq: np.ndarray) -> tuple[float, float]:
        """Summaries of the chunk at the finest reduction, which coarser levels aggregate; returns the chunk's
        (min, max)."""
        if not self._zooms:
            return float(v.min()), float(v.max())
        r0 = self._zooms[0].reduction
        pos0 = start // r0
        # bin boundaries: the chunk start, then every multiple of r0 inside the chunk
        first = np.concatenate(([0], np.arange((pos0 + 1) * r0 - start, v.size, r0)))
        part = np.zeros(first.size, _ZREC)
        part["chrom"] = cid
        part["start"] = (first + start) // r0 * r0
        part["valid"] = np.diff(np.concatenate((first, [v.size])))
        part["min"] = np.minimum.reduceat(v, first)
        part["max"] = np.maximum.reduceat(v, first)
        part["sum"] = np.add.reduceat(v64, first)
        part["sumsq"] = np.add.reduceat(sq, first)
        for z in self._zooms:
            z.add(cid, self._lengths[cid], part)
        return float(part["min"].min()), float(part["max"].max())

    def close(self) -> None:
        f = self._f
        if f is None:
            return
        try:
            n_sections = self._entries.n
            end_data = f.tell()
            index_offset = _write_rtree(f, self._entries, SECTION, end_data)
            zoom_headers = []
            if self.n_values:
                for z in self._zooms:
                    z.finish()
                    data_offset = f.tell()
                    f.write(struct.pack("<I", z.n))
                    base = f.tell()
                    if z.data is not None:
                        z.data.flush()
                        z.data.seek(0)
                        shutil.copyfileobj(z.data, f, 1 << 20)
                    blocks = _Spool(_ENTRY, os.path.dirname(os.path.abspath(self.path)))
                    for b in z.blocks.blocks(1 << 16):
                        b = b.copy()
                        b["off"] += np.uint64(base)
                        blocks.append(b)
                    zoom_index = _write_rtree(f, blocks, ZOOM_ITEMS, f.tell())
                    blocks.close()
                    zoom_headers.append(struct.pack("<IIQQ", z.reduction, 0, data_offset, zoom_index))
            s = self._stats
            summary = struct.pack("<Qdddd", s[0], s[1] if s[0] else 0.0, s[2] if s[0] else 0.0, s[3], s[4])
            buf_size = max(24 + 4 * SECTION, _ZREC.itemsize * ZOOM_ITEMS)
            header = struct.pack("<IHHQQQHHQQIQ", BIGWIG_MAGIC, 4, len(zoom_headers), self._chrom_tree_offset,
                                 self._data_offset, index_offset, 0, 0, 0, self._summary_offset, buf_size, 0)
            f.seek(0)
            f.write(header + b"".join(zoom_headers))
            f.seek(self._summary_offset)
            f.write(summary)
            f.seek(self._data_offset)
            f.write(struct.pack("<Q", n_sections))
        finally:
            self._release()

    def _release(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self._entries.close()
        for z in self._zooms:
            z.close()

    abort = _release


DEFAULT_BEDGRAPH_DIGITS = 3  # decimals: probabilities to 0.001, about 40x fewer lines than full float32


class BedGraphWriter:
    """bedGraph lines (``chrom start end value``, 0-based half-open) to a binary stream.

    ``digits=N`` rounds every value to N decimals (printed with N decimals) and merges neighbouring positions
    whose rounded values are equal into one line, across chunks too; ``digits=None`` keeps full float32
    precision (the shortest text that reads back to the same float32) and merges only exactly equal neighbours.
    Positions without a value end a line (``add`` calls that do not continue the previous one)."""

    def __init__(self, stream: BinaryIO, digits: int | None = DEFAULT_BEDGRAPH_DIGITS):
        from .atomic import stream_label

        if digits is not None and not 0 <= int(digits) <= 9:
            raise ValueError(f"bedGraph digits {digits}: must be 0..9 (or None for full float32)")
        self._out = stream
        self._label = stream_label(stream)
        self.digits = None if digits is None else int(digits)
        self._pending: tuple[str, int, int, float] | None = None  # the last line, which the next chunk may extend

    def add(self, chrom: str, start: int, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float32)
        if not v.size:
            return
        if self.digits is not None:
            v = np.round(v.astype(np.float64), self.digits)
        cut = np.flatnonzero(v[1:] != v[:-1]) + 1
        starts = np.concatenate(([0], cut)) + start
        ends = np.concatenate((cut, [v.size])) + start
        vals = v[starts - start]
        p = self._pending
        if p is not None and p[0] == chrom and p[2] == start and p[3] == vals[0]:
            starts[0] = p[1]  # the first line continues the pending one
        elif p is not None:
            self._write(p[0], np.array([p[1]]), np.array([p[2]]), np.array([p[3]], dtype=v.dtype))
        self._pending = (chrom, int(starts[-1]), int(ends[-1]), vals[-1])
        if starts.size > 1:
            self._write(chrom, starts[:-1], ends[:-1], vals[:-1])

    def _write(self, chrom: str, starts: np.ndarray, ends: np.ndarray, vals: np.ndarray) -> None:
        import polars as pl

        from .atomic import writing

        df = pl.DataFrame({
            "chrom": pl.Series([chrom], dtype=pl.String).extend_constant(chrom, starts.size - 1),
            "start": starts.astype(np.int64),
            "end": ends.astype(np.int64),
            "value": vals,
        })
        with writing(self._label):
            if self.digits is None:
                df.write_csv(self._out, separator="\t", include_header=False)
            else:
                df.write_csv(self._out, separator="\t", include_header=False, float_precision=self.digits)

    def flush(self) -> None:
        from .atomic import writing

        if self._pending is not None:
            p, self._pending = self._pending, None
            self._write(p[0], np.array([p[1]]), np.array([p[2]]), np.array([p[3]]))
        with writing(self._label):
            self._out.flush()
