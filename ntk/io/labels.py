"""Labelled sequences for fine-tuning and prediction: CSV/TSV/Parquet tables, FASTA with labels in the headers,
or BED intervals over a reference FASTA.

Every reader returns a :class:`LabeledSequences`: names, normalised sequences (uppercase, IUPAC codes -> N),
the raw label values per label column (strings or numbers; ``None`` when empty), a ``where`` string per
record for error messages (``line 12``, ``record seq7 (line 40)``, ``row 3``) and, for BED input, the
genomic coordinates (so splits can hold out whole chromosomes).

- Tables: columns ``--sequence-col`` (default ``sequence``), ``--label-col`` (default ``label``; several for
  multi-label or multi-target), optional ``--name-col`` (else ``row<N>``), optional ``chrom`` column.
  Format from the extension: ``.csv``, ``.tsv``/``.txt``, ``.parquet`` (``.gz`` allowed for text).
- FASTA: labels are ``key=value`` words in the header (``>seq1 label=promoter gc=0.41``); with one label column
  and a header without ``=``, the first word after the name is the label (``>seq1 promoter``).
- BED + reference: label columns are 1-based column numbers (``5``) or ``name`` (4) / ``score`` (5); the
  default ``label`` means the name column. ``-`` strand intervals are reverse-complemented.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ..errors import InputError
from .fasta import IndexedFasta, iter_fasta, normalise_sequence
from .intervals import check_contig_naming, read_bed

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fas", ".seq")
_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")  # sequences here are already normalised to ACGTN


@dataclass
class LabeledSequences:
    names: list[str]
    sequences: list[str]
    labels: dict[str, list] = field(default_factory=dict)  # label column -> raw values (None = missing)
    where: list[str] = field(default_factory=list)
    chroms: list[str] | None = None
    starts: list[int] | None = None
    ends: list[int] | None = None
    strands: list[str] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.sequences)

    def subset(self, idx) -> LabeledSequences:
        """The records at positions ``idx`` (in that order)."""
        def pick(xs):
            return [xs[i] for i in idx]

        def opt(xs):
            return pick(xs) if xs is not None else None

        return LabeledSequences(pick(self.names), pick(self.sequences), {k: pick(v) for k, v in self.labels.items()},
                                pick(self.where), opt(self.chroms), opt(self.starts), opt(self.ends),
                                opt(self.strands), self.source)


def input_kind(path: str) -> str:
    """``parquet``, ``csv``, ``tsv`` or ``fasta`` from the file name (``.gz`` ignored) or its first byte."""
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".tsv", ".txt", ".tab")):
        return "tsv"
    if name.endswith(FASTA_SUFFIXES) or path == "-":
        return "fasta"
    p = Path(path)
    if p.is_file():
        import gzip

        with open(p, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(p, "rb") as g:
                head = g.read(1)
        if head[:1] == b">":
            return "fasta"
    raise InputError(f"{path}: cannot tell the input format (name it .csv, .tsv, .parquet or .fa)")


def _check_columns(df: pl.DataFrame, wanted: list[str], path: str) -> None:
    for c in wanted:
        if c not in df.columns:
            raise InputError(f"{path}: no column {c!r} (columns: {', '.join(df.columns[:12])}); "
                             "choose with --sequence-col/--label-col/--name-col")


def read_table(path: str, label_cols: list[str], sequence_col: str = "sequence", name_col: str | None = None,
               require_labels: bool = True) -> LabeledSequences:
    kind = input_kind(path)
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if kind == "parquet":
            df = pl.read_parquet(p)
        else:
            df = pl.read_csv(p, separator="," if kind == "csv" else "\t", infer_schema_length=10000,
                             null_values=["", "NA", "NaN", "nan", "."])
    except (pl.exceptions.PolarsError, OSError) as e:
        raise InputError(f"{path}: cannot read as {kind.upper()} ({str(e).splitlines()[0][:200]})") from None
    _check_columns(df, [sequence_col] + (label_cols if require_labels else []) + ([name_col] if name_col else []),
                   path)
    first_line = 2 if kind != "parquet" else 1  # header on line 1 of text tables
    unit = "line" if kind != "parquet" else "row"
    where = [f"{unit} {i + first_line}" for i in range(df.height)]
    seqs = []
    for w, s in zip(where, df[sequence_col].to_list()):
        if s is None or not str(s).strip():
            raise InputError(f"{path}: {w}: empty sequence")
        seqs.append(normalise_sequence(str(s).strip(), f"{path}: {w}"))
    names = [str(x) for x in df[name_col].to_list()] if name_col else [f"row{i + 1}" for i in range(df.height)]
    labels = {c: df[c].to_list() for c in label_cols if c in df.columns}
    chroms = [str(x) for x in df["chrom"].to_list()] if "chrom" in df.columns else None
    if df.height == 0:
        raise InputError(f"{path}: no rows")
    return LabeledSequences(names, seqs, labels, where, chroms=chroms, source=str(path))


def _header_labels(desc: str, label_cols: list[str]) -> dict[str, str | None]:
    words = desc.split()
    kv = dict(w.split("=", 1) for w in words if "=" in w)
    if not kv and len(label_cols) == 1 and words:
        return {label_cols[0]: words[0]}
    return {c: kv.get(c) for c in label_cols}


def read_fasta_labeled(path: str, label_cols: list[str], require_labels: bool = True) -> LabeledSequences:
    names, seqs, where = [], [], []
    labels: dict[str, list] = {c: [] for c in label_cols}
    for rec in iter_fasta(path):
        w = f"record {rec.name} (line {rec.line})"
        if not rec.sequence:
            raise InputError(f"{path}: {w}: empty sequence")
        names.append(rec.name)
        seqs.append(rec.sequence)
        where.append(w)
        got = _header_labels(rec.description, label_cols)
        for c in label_cols:
            labels[c].append(got[c])
    if require_labels:
        for c in label_cols:
            if all(v is None for v in labels[c]):
                raise InputError(f"{path}: no FASTA header carries label {c!r} (write headers like '>seq1 {c}=VALUE' "
                                 "or '>seq1 VALUE')")
    return LabeledSequences(names, seqs, labels, where, source=str(path))


def _bed_column(col: str) -> int:
    """0-based index into a BED line for a label column given as a 1-based number, 'name' or 'score'."""
    named = {"label": 3, "name": 3, "score": 4, "strand": 5}
    if col in named:
        return named[col]
    try:
        i = int(col)
    except ValueError:
        raise InputError(f"--label-col {col!r}: for BED input give a 1-based column number (e.g. 5), 'name' or "
                         "'score'") from None
    if i < 4:
        raise InputError(f"--label-col {col}: BED columns 1-3 are chrom/start/end, not labels")
    return i - 1


def read_bed_labeled(bed: str, reference: str, label_cols: list[str], chr_map: dict[str, str] | None = None,
                     require_labels: bool = True) -> LabeledSequences:
    fa = IndexedFasta(reference)
    idx = {c: _bed_column(c) for c in label_cols}
    ivs = list(read_bed(bed, None, chr_map))
    if not ivs:
        raise InputError(f"{bed}: no intervals")
    check_contig_naming([iv.chrom for iv in ivs], fa.lengths, bed)
    names, seqs, where, chroms, starts, ends, strands = [], [], [], [], [], [], []
    labels: dict[str, list] = {c: [] for c in label_cols}
    for n, iv in enumerate(ivs, 1):
        if iv.end > fa.lengths[iv.chrom]:
            raise InputError(f"{bed}: interval {n} ({iv.chrom}:{iv.start}-{iv.end}) extends beyond the contig end "
                             f"({fa.lengths[iv.chrom]})")
        s = fa.fetch(iv.chrom, iv.start, iv.end)
        if iv.strand == "-":
            s = s.translate(_COMPLEMENT)[::-1]
        fields = [iv.chrom, str(iv.start), str(iv.end), iv.name, iv.score, iv.strand, *iv.extra]
        for c, i in idx.items():
            v = fields[i] if i < len(fields) else None
            labels[c].append(None if v in (None, "", ".") else v)
        names.append(f"{iv.chrom}:{iv.start + 1}-{iv.end}({iv.strand})" if iv.strand != "." else iv.region_string())
        seqs.append(s)
        where.append(f"interval {n} ({iv.chrom}:{iv.start}-{iv.end})")
        chroms.append(iv.chrom)
        starts.append(iv.start)
        ends.append(iv.end)
        strands.append(iv.strand)
    fa.close()
    return LabeledSequences(names, seqs, labels, where, chroms, starts, ends, strands, source=str(bed))


def read_labeled(path: str, label_cols: list[str], sequence_col: str = "sequence", name_col: str | None = None,
                 regions: str | None = None, reference: str | None = None, chr_map: dict[str, str] | None = None,
                 require_labels: bool = True) -> LabeledSequences:
    """Dispatch on the input: ``regions`` (BED) + ``reference``, else a table or FASTA at ``path``."""
    if regions:
        if not reference:
            raise InputError("-R/--regions needs --reference GENOME.fa")
        return read_bed_labeled(regions, reference, label_cols, chr_map, require_labels)
    if path is None:
        raise InputError("no input: give a table/FASTA file, or -R regions.bed --reference genome.fa")
    if input_kind(path) == "fasta":
        return read_fasta_labeled(path, label_cols, require_labels)
    return read_table(path, label_cols, sequence_col, name_col, require_labels)
