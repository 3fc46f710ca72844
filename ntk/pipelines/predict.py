"""``ntk predict``: apply a fine-tuned classifier or regressor (``ntk finetune classify|regress``) to new sequences.

Input: FASTA (streamed), a CSV/TSV table (streamed) or Parquet table (read in slices) with a sequence column,
or ``-R regions.bed --reference genome.fa`` (``-`` strand reverse-complemented). Records are processed in
chunks, so memory stays flat, and written to Parquet as they come (:class:`ntk.io.tables.ParquetStreamWriter`).

Output columns: ``name`` (+ ``chrom start end strand`` for BED input), ``length``, then
- single-label classification: ``pred_label`` (class name; an Int64 column when every class name is an
  integer) and ``prob_<class>`` per class (softmax);
- multi-label: ``prob_<label>`` (sigmoid) and ``pred_<label>`` (prob >= ``threshold``) per label;
- regression: ``pred_<target>`` per target, in the targets' own units.
A record longer than the model's context (tokens incl. CLS) is an error naming it.
"""
from __future__ import annotations

import csv
import gzip
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

from .. import __version__
from ..errors import CheckpointError, InputError
from ..io.atomic import check_writable_target, refuse_inputs_as_outputs
from ..io.fasta import IndexedFasta, iter_fasta, normalise_sequence
from ..io.intervals import read_bed
from ..io.labels import input_kind
from ..model.checkpoint import load_model
from ..model.runtime import set_threads
from ..report import NULL, Reporter
from .sequence_outputs import pad_token, sequence_outputs  # noqa: F401  (shared with finetune)

CHUNK = 4096  # records tokenized and predicted together


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory of ``ntk finetune`` (its ``best/``, else ``final/``) or a checkpoint directory."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such run directory or checkpoint")
    if (p / "config.json").is_file():
        return p
    for sub in ("best", "final"):
        if (p / sub / "config.json").is_file():
            return p / sub
    if (p / "fold-1").is_dir():
        raise CheckpointError(f"{p}: a k-fold run holds one model per fold: pass {p}/fold-K")
    raise CheckpointError(f"{p}: neither a checkpoint (config.json) nor an `ntk finetune` run directory "
                          "(best/ or final/)")


def load_predictor(path: str | Path, device: str = "auto", precision: str = "auto"):
    ckpt = resolve_checkpoint(path)
    model = load_model(ckpt, device=device, dtype=precision)
    cfg = model.config
    if cfg.family.startswith("ntv3") and model.classifier is None:
        raise CheckpointError(f"{ckpt}: an NTv3 model without a fine-tuned sequence head (`ntk finetune classify|"
                              "regress`): use `ntk embed`, `ntk segment`, `ntk tracks` or `ntk score-variants` with it")
    if model.classifier is None or not cfg.num_labels or not cfg.problem_type:
        what = "a SegmentNT-type model: use `ntk segment`" if cfg.is_segmentation else \
            "a base model without a fine-tuned sequence head: use `ntk embed`"
        raise CheckpointError(f"{ckpt}: not a fine-tuned classifier/regressor ({what})")
    return model, ckpt


@dataclass
class Records:
    names: list[str]
    sequences: list[str]
    where: list[str]
    coords: dict[str, list] | None = None  # chrom/start/end/strand for BED input


def _open_text(path: str):
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    with open(p, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(p, "rt", encoding="utf-8", newline="") if gz else open(p, encoding="utf-8", newline="")


def iter_records(path: str | None, sequence_col: str = "sequence", name_col: str | None = None,
                 regions: str | None = None, reference: str | None = None, chr_map: dict | None = None,
                 chunk: int = CHUNK) -> Iterator[Records]:
    """Chunks of input records from any supported input, streamed."""
    if regions:
        if not reference:
            raise InputError("-R/--regions needs --reference GENOME.fa")
        yield from _bed_records(regions, reference, chr_map, chunk)
        return
    if path is None:
        raise InputError("no input: give a FASTA/table file, or -R regions.bed --reference genome.fa")
    kind = input_kind(path)
    if kind == "fasta":
        yield from _fasta_records(path, chunk)
    elif kind == "parquet":
        yield from _parquet_records(path, sequence_col, name_col, chunk)
    else:
        yield from _text_table_records(path, kind, sequence_col, name_col, chunk)


def _bed_records(regions: str, reference: str, chr_map: dict | None, chunk: int) -> Iterator[Records]:
    """BED intervals of the reference (``-`` strand reverse-complemented), with their coordinates."""
    fa = IndexedFasta(reference)
    comp = str.maketrans("ACGTN", "TGCAN")
    buf = Records([], [], [], {"chrom": [], "start": [], "end": [], "strand": []})
    for n, iv in enumerate(read_bed(regions, fa.lengths, chr_map), 1):
        s = fa.fetch(iv.chrom, iv.start, iv.end)
        if iv.strand == "-":
            s = s.translate(comp)[::-1]
        buf.names.append(iv.name if iv.name != "." else iv.region_string())
        buf.sequences.append(s)
        buf.where.append(f"interval {n} ({iv.chrom}:{iv.start}-{iv.end})")
        for k, v in zip(("chrom", "start", "end", "strand"), (iv.chrom, iv.start, iv.end, iv.strand)):
            buf.coords[k].append(v)
        if len(buf.names) >= chunk:
            yield buf
            buf = Records([], [], [], {k: [] for k in buf.coords})
    if buf.names:
        yield buf


def _fasta_records(path: str, chunk: int) -> Iterator[Records]:
    buf = Records([], [], [])
    for rec in iter_fasta(path):
        buf.names.append(rec.name)
        buf.sequences.append(rec.sequence)
        buf.where.append(f"record {rec.name} (line {rec.line})")
        if len(buf.names) >= chunk:
            yield buf
            buf = Records([], [], [])
    if buf.names:
        yield buf


def _check_columns(path: str, columns: list[str], sequence_col: str, name_col: str | None) -> None:
    for c in [sequence_col] + ([name_col] if name_col else []):
        if c not in columns:
            raise InputError(f"{path}: no column {c!r} (columns: {', '.join(columns[:12])})")


def _parquet_records(path: str, sequence_col: str, name_col: str | None, chunk: int) -> Iterator[Records]:
    """A Parquet table read in slices of ``chunk`` rows."""
    lf = pl.scan_parquet(path)
    _check_columns(path, lf.collect_schema().names(), sequence_col, name_col)
    off = 0
    while True:
        df = lf.slice(off, chunk).collect()
        if df.height == 0:
            break
        yield _table_chunk(path, df[sequence_col].to_list(),
                           df[name_col].to_list() if name_col else None, off, "row", 1)
        off += df.height


def _text_table_records(path: str, kind: str, sequence_col: str, name_col: str | None,
                        chunk: int) -> Iterator[Records]:
    """A CSV/TSV table (plain or gzip, ``-`` = stdin), streamed."""
    fh = _open_text(path)
    try:
        reader = csv.reader(fh, delimiter="," if kind == "csv" else "\t")
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty table")
        _check_columns(path, header, sequence_col, name_col)
        si = header.index(sequence_col)
        ni = header.index(name_col) if name_col else None
        seqs, names, off = [], [], 0
        for row in reader:
            if not row:
                continue
            seqs.append(row[si] if si < len(row) else "")
            names.append(row[ni] if ni is not None and ni < len(row) else None)
            if len(seqs) >= chunk:
                yield _table_chunk(path, seqs, names if name_col else None, off, "line", 2)
                off += len(seqs)
                seqs, names = [], []
        if seqs:
            yield _table_chunk(path, seqs, names if name_col else None, off, "line", 2)
    finally:
        if path != "-":
            fh.close()


def _table_chunk(path, seqs, names, offset: int, unit: str, first: int) -> Records:
    where = [f"{unit} {offset + i + first}" for i in range(len(seqs))]
    out = []
    for w, s in zip(where, seqs):
        if s is None or not str(s).strip():
            raise InputError(f"{path}: {w}: empty sequence")
        out.append(normalise_sequence(str(s).strip(), f"{path}: {w}"))
    names = [str(x) for x in names] if names is not None else [f"row{offset + i + 1}" for i in range(len(seqs))]
    return Records(names, out, where)


def _is_int_text(text: str) -> bool:
    """'0', '1', '-2' (what reads back to the same text as an integer); not '01', '1.0', 'x'."""
    try:
        return str(int(text)) == text
    except ValueError:
        return False


def prediction_columns(model, out: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    cfg = model.config
    names = [cfg.id2label[str(i)] for i in range(cfg.num_labels)] if cfg.id2label else \
        [str(i) for i in range(cfg.num_labels)]
    cols: dict[str, np.ndarray] = {}
    if cfg.problem_type == "single_label_classification":
        proba = torch.softmax(torch.from_numpy(out), -1).numpy()
        ints = [int(n) for n in names] if all(_is_int_text(n) for n in names) else None
        labels = np.asarray(ints, dtype=np.int64) if ints is not None else np.asarray(names, dtype=object)
        cols["pred_label"] = labels[proba.argmax(1)]  # integer labels stay integers
        for j, n in enumerate(names):
            cols[f"prob_{n}"] = proba[:, j].astype(np.float32)
    elif cfg.problem_type == "multi_label_classification":
        proba = 1 / (1 + np.exp(-out.astype(np.float64)))
        for j, n in enumerate(names):
            cols[f"prob_{n}"] = proba[:, j].astype(np.float32)
        for j, n in enumerate(names):
            cols[f"pred_{n}"] = proba[:, j] >= threshold
    else:
        for j, n in enumerate(names):
            cols[f"pred_{n}"] = out[:, j].astype(np.float32)
    return cols


def output_schema(model, genomic: bool) -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {"name": pl.String}
    if genomic:
        schema.update(chrom=pl.String, start=pl.Int64, end=pl.Int64, strand=pl.String)
    schema["length"] = pl.Int64
    dummy = prediction_columns(model, np.zeros((1, model.config.num_labels), dtype=np.float32))
    for k, v in dummy.items():
        schema[k] = (pl.String if v.dtype == object else pl.Boolean if v.dtype == bool
                     else pl.Int64 if v.dtype.kind == "i" else pl.Float32)
    return schema


@dataclass
class PredictOptions:
    """How :func:`predict` reads its input and runs the model (``ntk predict`` maps its options onto this)."""
    sequence_col: str = "sequence"  # sequence column of a table
    name_col: str | None = None  # record name column of a table
    regions: str | None = None  # BED of intervals of ``reference`` (instead of a FASTA/table input)
    reference: str | None = None
    chr_map: dict | None = None  # BED contig name -> FASTA contig name
    batch_size: int = 32
    threshold: float = 0.5  # multi-label: pred_<label> is prob >= threshold
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    force: bool = False  # overwrite an existing output
    quiet: bool = True  # no per-chunk progress lines


def predict(model_path: str | Path, path: str | None, output: str, opts: PredictOptions | None = None, *,
            reporter: Reporter = NULL, **options) -> dict:
    """Predict every input record with a fine-tuned model; write Parquet to ``output`` (``-``: stdout);
    unless ``quiet``, a line per chunk of records to ``reporter``.

    ``options``: fields of :class:`PredictOptions` given as keywords (``predict(run, "new.fa", "p.parquet",
    device="cpu", threads=1)``), over ``opts`` when both are given."""
    from ..io.tables import ParquetStreamWriter

    o = replace(opts or PredictOptions(), **options)
    set_threads(o.threads)
    if output != "-":
        refuse_inputs_as_outputs([output], [path, o.regions, o.reference])
        check_writable_target(output, o.force)
    model, ckpt = load_predictor(model_path, o.device, o.precision)
    schema = output_schema(model, genomic=bool(o.regions))
    meta = {"ntk_version": __version__, "ntk_model": str(ckpt), "ntk_problem_type": model.config.problem_type}
    n = 0
    progress = None if o.quiet else reporter
    with torch.inference_mode(), ParquetStreamWriter(output, schema, metadata=meta) as writer:
        for chunk in iter_records(path, o.sequence_col, o.name_col, o.regions, o.reference, o.chr_map):
            writer.write(_predict_chunk(model, chunk, o))
            n += len(chunk.names)
            if progress is not None:
                progress.log(f"predict: {n:,} records")
    return {"records": n, "output": output, "checkpoint": str(ckpt)}


def _predict_chunk(model, chunk: Records, o: PredictOptions) -> pl.DataFrame:
    """One chunk of records -> its rows of the output table (a record too long for the model is an error)."""
    tok, max_tokens = model.tokenizer, model.config.max_tokens
    ids = []
    for s, w in zip(chunk.sequences, chunk.where):
        t = tok.tokenize(s)[0]
        if len(t) > max_tokens:
            raise InputError(f"{w}: {len(s)} nt needs {len(t)} tokens but the model takes at most {max_tokens}")
        ids.append(t)
    out = sequence_outputs(model, ids, o.batch_size, pad_token(model))
    cols = {"name": chunk.names}
    if o.regions:
        cols.update(chunk.coords)
    cols["length"] = [len(s) for s in chunk.sequences]
    cols.update({k: list(v) if v.dtype == object else v
                 for k, v in prediction_columns(model, out, o.threshold).items()})
    return pl.DataFrame(cols)
