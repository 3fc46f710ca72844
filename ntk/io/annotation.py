"""Genome annotation (GTF, GFF3 or BED) -> per-nucleotide 0/1 targets per feature, for segmentation training.

The annotation is read once, streaming, into sorted merged intervals per (feature, contig): memory grows with
the annotation, never with the genome. :meth:`Annotation.targets` paints the targets of one window on demand.

Feature definitions (all unstranded: a nucleotide belongs to a feature when any record on either strand
covers it; coordinates converted from 1-based inclusive GTF/GFF3 to 0-based half-open):

- ``protein_coding_gene``: span of ``gene`` records whose biotype (``gene_biotype``/``gene_type``/``biotype``)
  is ``protein_coding``; generally ``<biotype>_gene`` selects genes of that biotype (``tRNA_gene``, ...).
- ``lncRNA``: span of genes with biotype ``lncRNA`` (or the older ``lincRNA``).
- ``exon``: every ``exon`` record (all transcripts, all biotypes).
- ``intron``: per transcript, the gaps between its consecutive (sorted, merged) exons.
- ``splice_donor``: the first 2 nt of each intron in transcript orientation (the canonical ``GT``): genomic
  ``[s, s+2)`` on ``+``, ``[e-2, e)`` on ``-``. ``splice_acceptor``: the last 2 nt (the ``AG``): ``[e-2, e)``
  on ``+``, ``[s, s+2)`` on ``-``. Introns of transcripts without a strand give no splice sites.
- ``5UTR`` / ``3UTR``: ``five_prime_utr``/``three_prime_utr`` (Ensembl GTF), ``five_prime_UTR``/
  ``three_prime_UTR`` (GFF3), ``5UTR``/``3UTR``, or GENCODE ``UTR`` records assigned by their side of the
  transcript's CDS. UTRs are never inferred from exons and CDS when no UTR record exists.
- any other name: records of that type (column 3), e.g. ``CDS``, ``start_codon``, ``transcript``.
- BED: the name column (4) is the feature; every interval named ``F`` belongs to feature ``F``.

A requested feature without any interval in the annotation is an error that names the features found.
"""
from __future__ import annotations

import gzip
import re
import urllib.parse
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import InputError
from .intervals import suggest_contig

GTF_FEATURES = ("protein_coding_gene", "lncRNA", "exon", "intron", "splice_donor", "splice_acceptor", "5UTR", "3UTR")
_BIOTYPE_KEYS = ("gene_biotype", "gene_type", "biotype")
_LNC_BIOTYPES = {"lncRNA", "lincRNA"}
_UTR5 = {"five_prime_utr", "five_prime_UTR", "5UTR", "5'UTR", "UTR5"}
_UTR3 = {"three_prime_utr", "three_prime_UTR", "3UTR", "3'UTR", "UTR3"}
_GENE_TYPES = {"gene", "ncRNA_gene", "pseudogene"}
_GTF_ATTR = re.compile(r'\s*([^\s";]+)\s+(?:"([^"]*)"|([^;\s]+))\s*;?')


def detect_format(path: str | Path) -> str:
    """``gtf``, ``gff3`` or ``bed``: by extension (``.gz`` ignored), else by the first data line."""
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, fmt in ((".gtf", "gtf"), (".gff3", "gff3"), (".gff", "gff3"), (".bed", "bed")):
        if name.endswith(ext):
            return fmt
    for line in _lines(path):
        if line.startswith("##gff-version"):
            return "gff3"
        if line.startswith(("#", "track", "browser")) or not line.strip():
            continue
        f = line.rstrip("\n").split("\t")
        if len(f) >= 9 and f[3].isdigit() and f[4].isdigit():
            return "gtf" if '"' in f[8] else "gff3"
        if len(f) >= 3 and f[1].isdigit() and f[2].isdigit():
            return "bed"
        break
    raise InputError(f"{path}: cannot tell the annotation format (expected GTF, GFF3 or BED; name the file "
                     ".gtf/.gff3/.bed)")


def _lines(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: annotation file not found")
    with open(p, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    try:
        with opener(p, "rt", encoding="utf-8", errors="replace") as fh:
            yield from fh
    except (OSError, EOFError) as e:
        raise InputError(f"{p}: cannot read ({e})") from None


def _merge(starts: list[int], ends: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, merged (overlapping or adjacent) intervals as two int64 arrays."""
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    order = np.argsort(s, kind="mergesort")
    s, e = s[order], e[order]
    if s.size == 0:
        return s, e
    run_end = np.maximum.accumulate(e)
    new = np.r_[True, s[1:] > run_end[:-1]]
    idx = np.flatnonzero(new)
    return s[idx], np.maximum.reduceat(e, idx)


class Annotation:
    """Per-feature merged intervals by contig; ``targets(chrom, start, end)`` -> uint8 [end-start, F]."""

    def __init__(self, features: list[str], intervals: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
                 source: str):
        self.features = list(features)
        self.source = source
        self._iv = intervals  # feature -> contig -> (starts, ends)

    @property
    def contigs(self) -> set[str]:
        return {c for per in self._iv.values() for c in per}

    def covered_bp(self, feature: str) -> int:
        return int(sum(int((e - s).sum()) for s, e in self._iv[feature].values()))

    def intervals(self, feature: str, chrom: str) -> tuple[np.ndarray, np.ndarray]:
        empty = np.zeros(0, dtype=np.int64)
        return self._iv[feature].get(chrom, (empty, empty))

    def targets(self, chrom: str, start: int, end: int) -> np.ndarray:
        n = end - start
        out = np.zeros((n, len(self.features)), dtype=np.uint8)
        for j, f in enumerate(self.features):
            s, e = self.intervals(f, chrom)
            if s.size == 0:
                continue
            i0 = int(np.searchsorted(e, start, side="right"))
            i1 = int(np.searchsorted(s, end, side="left"))
            if i1 <= i0:
                continue
            a = np.clip(s[i0:i1] - start, 0, n)
            b = np.clip(e[i0:i1] - start, 0, n)
            diff = np.zeros(n + 1, dtype=np.int32)
            np.add.at(diff, a, 1)
            np.add.at(diff, b, -1)
            out[:, j] = np.cumsum(diff[:n]) > 0
        return out


# -- readers ---------------------------------------------------------------------------------------
class _Collector:
    """Keeps intervals of the wanted features only; counts every feature name seen (for error messages)."""

    def __init__(self, wanted: set[str]):
        self.wanted = wanted
        self.seen: dict[str, int] = defaultdict(int)
        self.iv: dict[str, dict[str, tuple[list[int], list[int]]]] = defaultdict(lambda: defaultdict(lambda: ([], [])))

    def add(self, feature: str, chrom: str, start: int, end: int) -> None:
        if end <= start:
            return
        self.seen[feature] += 1
        if feature in self.wanted:
            s, e = self.iv[feature][chrom]
            s.append(start)
            e.append(end)

    def build(self) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
        return {f: {c: _merge(*se) for c, se in per.items()} for f, per in self.iv.items()}


def _gtf_attrs(text: str) -> dict[str, str]:
    return {m.group(1): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _GTF_ATTR.finditer(text)}


def _gff3_attrs(text: str) -> dict[str, str]:
    out = {}
    for part in text.strip().strip(";").split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = urllib.parse.unquote(v.strip())
    return out


def _read_gff(path, fmt: str, wanted: set[str], lengths: dict[str, int] | None, chr_map: dict[str, str] | None):
    col = _Collector(wanted)
    need_transcripts = bool(wanted & {"intron", "splice_donor", "splice_acceptor", "5UTR", "3UTR"})
    exons: dict[str, list] = defaultdict(list)  # transcript -> [(chrom, start, end, strand)]
    utrs: dict[str, list] = defaultdict(list)  # generic 'UTR' records, per transcript
    cds_span: dict[str, list[int]] = {}  # transcript -> [min start, max end]
    unknown_contigs: dict[str, int] = {}
    parse = _gtf_attrs if fmt == "gtf" else _gff3_attrs
    for lineno, line in enumerate(_lines(path), 1):
        if line.startswith("#") or not line.strip():
            if line.startswith("##FASTA"):
                break
            continue
        f = line.rstrip("\r\n").split("\t")
        if len(f) != 9:
            raise InputError(f"{path}: line {lineno}: expected 9 tab-separated {fmt.upper()} columns, found {len(f)}")
        chrom = chr_map.get(f[0], f[0]) if chr_map else f[0]
        try:
            start, end = int(f[3]) - 1, int(f[4])
        except ValueError:
            raise InputError(f"{path}: line {lineno}: start/end are not integers ({f[3]!r}, {f[4]!r})") from None
        if start < 0 or end <= start:
            raise InputError(f"{path}: line {lineno}: invalid coordinates {f[3]}-{f[4]} (1-based inclusive, "
                             "start <= end)")
        if lengths is not None:
            if chrom not in lengths:
                unknown_contigs.setdefault(chrom, lineno)
                continue
            if end > lengths[chrom]:
                raise InputError(f"{path}: line {lineno}: {f[0]}:{f[3]}-{f[4]} extends beyond the end of {chrom} in "
                                 f"the FASTA ({lengths[chrom]} bp): annotation and genome assemblies differ?")
        ftype, strand = f[2], f[6]
        attrs = parse(f[8])
        col.add(ftype, chrom, start, end)
        if ftype in _GENE_TYPES:
            biotype = next((attrs[k] for k in _BIOTYPE_KEYS if k in attrs), None)
            if biotype:
                col.add(f"{biotype}_gene", chrom, start, end)
                if biotype in _LNC_BIOTYPES:
                    col.add("lncRNA", chrom, start, end)
        if ftype in _UTR5:
            col.add("5UTR", chrom, start, end)
        elif ftype in _UTR3:
            col.add("3UTR", chrom, start, end)
        parents = ([attrs["transcript_id"]] if "transcript_id" in attrs else []) if fmt == "gtf" else \
            [p for p in attrs.get("Parent", "").split(",") if p]
        for tid in parents if need_transcripts else ():
            if ftype == "exon":
                exons[tid].append((chrom, start, end, strand))
            elif ftype == "UTR":
                utrs[tid].append((chrom, start, end, strand))
            elif ftype == "CDS":
                span = cds_span.setdefault(tid, [start, end])
                span[0], span[1] = min(span[0], start), max(span[1], end)
    for items in exons.values():
        chrom, strand = items[0][0], items[0][3]
        s, e = _merge([x[1] for x in items], [x[2] for x in items])
        for a, b in zip(e[:-1].tolist(), s[1:].tolist()):  # introns: gaps between consecutive exons
            col.add("intron", chrom, a, b)
            if strand == "+":
                col.add("splice_donor", chrom, a, min(a + 2, b))
                col.add("splice_acceptor", chrom, max(b - 2, a), b)
            elif strand == "-":
                col.add("splice_donor", chrom, max(b - 2, a), b)
                col.add("splice_acceptor", chrom, a, min(a + 2, b))
    for tid, items in utrs.items():  # GENCODE 'UTR': 5' or 3' by its side of the CDS
        span = cds_span.get(tid)
        if span is None:
            continue
        for chrom, start, end, strand in items:
            upstream = end <= span[0] if strand != "-" else start >= span[1]
            col.add("5UTR" if upstream else "3UTR", chrom, start, end)
    return col, unknown_contigs


def _read_bed_features(path, wanted, lengths, chr_map):
    col = _Collector(wanted)
    unknown_contigs: dict[str, int] = {}
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        f = line.rstrip("\r\n").split("\t")
        if len(f) < 4:
            raise InputError(f"{path}: line {lineno}: an annotation BED needs a name column (4) holding the feature")
        chrom = chr_map.get(f[0], f[0]) if chr_map else f[0]
        try:
            start, end = int(f[1]), int(f[2])
        except ValueError:
            raise InputError(f"{path}: line {lineno}: start/end are not integers ({f[1]!r}, {f[2]!r})") from None
        if start < 0 or end <= start:
            raise InputError(f"{path}: line {lineno}: invalid interval {start}-{end} (BED is 0-based half-open)")
        if lengths is not None:
            if chrom not in lengths:
                unknown_contigs.setdefault(chrom, lineno)
                continue
            if end > lengths[chrom]:
                raise InputError(f"{path}: line {lineno}: {f[0]}:{start}-{end} extends beyond the end of {chrom} "
                                 f"({lengths[chrom]} bp)")
        col.add(f[3], chrom, start, end)
    return col, unknown_contigs


def read_annotation(path: str | Path, features: list[str], lengths: dict[str, int] | None = None,
                    chr_map: dict[str, str] | None = None, fmt: str | None = None) -> Annotation:
    """Read ``path`` and keep ``features``; check contig names against the FASTA ``lengths``.

    Contigs of the annotation missing from the FASTA are an error when they look like a naming mismatch
    (``chr1`` vs ``1``) or when no contig matches at all; other missing contigs (e.g. unplaced scaffolds
    absent from a subset FASTA) are skipped.
    """
    fmt = fmt or detect_format(path)
    if not features:
        raise InputError("no features requested (--features f1,f2,...)")
    dup = [f for f in set(features) if features.count(f) > 1]
    if dup:
        raise InputError(f"feature {dup[0]!r} requested twice")
    if fmt == "bed":
        col, unknown = _read_bed_features(path, set(features), lengths, chr_map)
    else:
        col, unknown = _read_gff(path, fmt, set(features), lengths, chr_map)
    iv = col.build()
    if lengths is not None and unknown:
        name, lineno = next(iter(unknown.items()))
        hint = suggest_contig(name, lengths)
        found_any = bool(col.seen)
        if hint or not found_any:
            raise InputError(f"{path}: line {lineno}: contig {name!r} is not in the FASTA"
                             f"{hint or ' (FASTA contigs: ' + ', '.join(list(lengths)[:5]) + ')'}")
    missing = [f for f in features if not iv.get(f)]
    if missing:
        present = sorted(col.seen)
        if fmt != "bed":
            derived = [f for f in GTF_FEATURES if f in col.seen]
            present = derived + [p for p in present if p not in derived]
        raise InputError(f"{path}: feature {missing[0]!r} is absent from the annotation"
                         f"{' (and ' + ', '.join(map(repr, missing[1:])) + ')' if len(missing) > 1 else ''}; "
                         f"features found: {', '.join(present[:20])}{' ...' if len(present) > 20 else ''}")
    return Annotation(features, {f: iv[f] for f in features}, str(path))
