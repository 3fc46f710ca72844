"""Genomic intervals: samtools-style region strings (1-based inclusive), BED files (0-based half-open),
contig-name maps (``--chr-map``) and detection of ``chr1`` vs ``1`` style mismatches.

Everything inside ntk is 0-based half-open; conversion happens here, once.
"""
from __future__ import annotations

import gzip
import itertools
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class Interval:
    chrom: str
    start: int  # 0-based
    end: int  # exclusive
    name: str = "."
    strand: str = "."
    score: str = "."
    extra: tuple[str, ...] = ()

    @property
    def length(self) -> int:
        return self.end - self.start

    def region_string(self) -> str:
        return f"{self.chrom}:{self.start + 1}-{self.end}"


_REGION = re.compile(r"^(?P<chrom>[^:\s]+?)(?::(?P<start>[\d,]+)(?:-(?P<end>[\d,]+))?)?$")


def parse_region(text: str, lengths: dict[str, int] | None = None) -> Interval:
    """``chr``, ``chr:start-end`` or ``chr:pos`` (1-based inclusive, commas allowed) -> 0-based Interval."""
    t = text.strip()
    if lengths is not None and t in lengths:
        return Interval(t, 0, lengths[t], name=t)
    m = _REGION.match(t)
    if not m:
        raise InputError(f"region {text!r}: expected chr, chr:start-end or chr:pos (1-based)")
    chrom = m["chrom"]
    if lengths is not None and chrom not in lengths:
        raise InputError(f"region {text!r}: unknown contig {chrom!r}{suggest_contig(chrom, lengths)}")
    if m["start"] is None:
        if lengths is None:
            raise InputError(f"region {text!r}: a whole-contig region needs the FASTA index")
        return Interval(chrom, 0, lengths[chrom], name=t)
    start = int(m["start"].replace(",", ""))
    end = int(m["end"].replace(",", "")) if m["end"] is not None else start
    if start < 1 or end < start:
        raise InputError(f"region {text!r}: start must be >= 1 and end >= start (1-based inclusive)")
    if lengths is not None and end > lengths[chrom]:
        raise InputError(f"region {text!r}: end {end} is beyond the end of {chrom} (length {lengths[chrom]})")
    return Interval(chrom, start - 1, end, name=t)


def _open(path: str) -> Iterable[str]:
    if path == "-":
        return sys.stdin
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    with open(p, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(p, "rt") if gz else open(p)


def read_bed(path: str, lengths: dict[str, int] | None = None, chr_map: dict[str, str] | None = None) -> Iterator[Interval]:
    """BED3+ records (0-based half-open); header/track/browser/comment lines skipped; validated per line."""
    label = "<stdin>" if path == "-" else str(path)
    fh = _open(path)
    try:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            f = line.rstrip("\r\n").split("\t")
            if len(f) < 3:
                f = line.split()
            if len(f) < 3:
                raise InputError(f"{label}: line {lineno}: expected at least 3 tab-separated columns (chrom start end)")
            chrom = chr_map.get(f[0], f[0]) if chr_map else f[0]
            try:
                start, end = int(f[1]), int(f[2])
            except ValueError:
                raise InputError(f"{label}: line {lineno}: start/end are not integers ({f[1]!r}, {f[2]!r})") from None
            if start < 0 or end <= start:
                raise InputError(f"{label}: line {lineno}: invalid interval {start}-{end} (BED is 0-based half-open, "
                                 "end > start >= 0)")
            if lengths is not None:
                if chrom not in lengths:
                    raise InputError(f"{label}: line {lineno}: unknown contig {f[0]!r}{suggest_contig(chrom, lengths)}")
                if end > lengths[chrom]:
                    raise InputError(f"{label}: line {lineno}: {chrom}:{start}-{end} extends beyond the contig end "
                                     f"({lengths[chrom]})")
            name = f[3] if len(f) > 3 else "."
            score = f[4] if len(f) > 4 else "."
            strand = f[5] if len(f) > 5 else "."
            if strand not in ("+", "-", "."):
                raise InputError(f"{label}: line {lineno}: strand must be +, - or . (got {strand!r})")
            yield Interval(chrom, start, end, name=name, strand=strand, score=score, extra=tuple(f[6:]))
    finally:
        if path != "-":
            fh.close()


def read_chr_map(path: str | None) -> dict[str, str] | None:
    """Two whitespace-separated columns: name in the input -> name in the reference FASTA."""
    if not path:
        return None
    out = {}
    for lineno, line in enumerate(_open(path), 1):
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split()
        if len(f) != 2:
            raise InputError(f"{path}: line {lineno}: expected two columns (input name, reference name)")
        out[f[0]] = f[1]
    return out


def _alt_names(name: str) -> list[str]:
    alts = []
    if name.startswith("chr"):
        alts.append(name[3:])
    else:
        alts.append("chr" + name)
    pairs = {"chrM": "MT", "MT": "chrM", "M": "chrM", "chrMT": "MT", "Mito": "chrM"}
    if name in pairs:
        alts.append(pairs[name])
    return alts


def suggest_contig(name: str, lengths: dict[str, int]) -> str:
    for alt in _alt_names(name):
        if alt in lengths:
            return (f" (the FASTA has {alt!r}: contig naming differs between inputs; pass --chr-map FILE with "
                    f"lines like '{name}\t{alt}')")
    return ""


def check_contig_naming(names: Iterable[str], lengths: dict[str, int], source: str) -> None:
    """Raise a clear error when most names in ``source`` only match the FASTA after adding/removing 'chr'."""
    names = list(dict.fromkeys(names))
    missing = [n for n in names if n not in lengths]
    if not missing:
        return
    fixable = [n for n in missing if suggest_contig(n, lengths)]
    if fixable:
        n = fixable[0]
        raise InputError(f"{source}: contig {n!r} is not in the FASTA{suggest_contig(n, lengths)}")
    raise InputError(f"{source}: contig {missing[0]!r} is not in the FASTA (FASTA contigs: "
                     f"{', '.join(list(lengths)[:5])}{'...' if len(lengths) > 5 else ''})")


def merge_overlapping(intervals: Iterable[Interval], order: list[str]) -> list[Interval]:
    """Sort by FASTA contig order (contigs not in ``order`` last, by name) and merge overlapping/adjacent intervals
    (strand ignored)."""
    rank = {c: i for i, c in enumerate(order)}
    # contigs not in ``order`` share one rank: the name keeps each contig's intervals together
    iv = sorted(intervals, key=lambda x: (rank.get(x.chrom, 1 << 30), "" if x.chrom in rank else x.chrom, x.start,
                                          x.end))
    out: list[Interval] = []
    for x in iv:
        if out and out[-1].chrom == x.chrom and x.start <= out[-1].end:
            if x.end > out[-1].end:
                out[-1] = Interval(x.chrom, out[-1].start, x.end, name=out[-1].name)
        else:
            out.append(Interval(x.chrom, x.start, x.end, name=x.name))
    return out


def iter_regions(regions: Sequence[str] = (), regions_file: str | None = None, lengths: dict[str, int] | None = None,
                 chr_map: dict[str, str] | None = None) -> Iterator[Interval]:
    """The regions a command is given, in input order: the ``-r`` strings (1-based inclusive; all parsed and
    checked against ``lengths`` now, so a bad one fails before any work), then the records of the ``-R`` BED
    file (0-based half-open; ``-`` = stdin), read lazily (streaming). An empty BED yields nothing here; see
    :func:`load_regions`."""
    parsed = [parse_region(r, lengths) for r in regions]
    if not regions_file:
        return iter(parsed)
    return itertools.chain(parsed, read_bed(regions_file, lengths, chr_map))


def load_regions(regions: Sequence[str] = (), regions_file: str | None = None, lengths: dict[str, int] | None = None,
                 chr_map: dict[str, str] | None = None, *, merge: bool = False) -> list[Interval]:
    """Every region of ``-r`` strings and a ``-R`` BED file (see :func:`iter_regions`), as a list; a BED file
    with no regions is an error. ``merge``: sorted in the order of ``lengths`` (FASTA contig order) with
    overlapping and adjacent regions merged (:func:`merge_overlapping`). The one region loader of every
    command (segment, tracks, score-variants; embed streams :func:`iter_regions`)."""
    out = list(iter_regions(regions, regions_file, lengths, chr_map))
    if regions_file and len(out) == len(regions):
        raise InputError(f"{regions_file}: no regions in the file")
    return merge_overlapping(out, list(lengths or {})) if merge else out
