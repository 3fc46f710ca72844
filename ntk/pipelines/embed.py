"""Embeddings of sequences and genomic regions: records -> tokens -> windows -> length-bucketed batches ->
model -> pooled rows, streamed to Parquet (or ``.npy``) in input order.

Rules (documented in the README, section ``ntk embed``):

- A record is embedded as the model tokenizes it whole: 6-mers from the start of every N-free run, single
  nucleotides for the remainders, every ``N`` its own token, ``<cls>`` first. Records are *not* split at N.
- A record whose tokens fit the context (``m.config.max_tokens`` incl. CLS) is one forward pass. A longer
  record is tiled **in token coordinates** with :func:`ntk.plan.windows.tile` (``unit=1``): windows of
  ``max_tokens - 1`` DNA tokens (+ CLS) overlapping by ``2 * crop`` tokens (default crop = 1/8 of the window);
  each token of the record is kept from exactly one window, the one where it lies most centrally. Tiling the
  record's own tokenization (rather than nucleotides) means every window fits whatever the N content, and the
  tokens pooled for a long record are exactly the tokens a short record would get. Per-token rows
  (``pool="none"``) near the boundary of two windows are the two windows' vectors blended with a linear ramp
  across their overlap (:class:`ntk.plan.windows.Blender`), so they change smoothly where windows meet;
  the pooled modes pool each window's own kept tokens.
- Pooling over the kept tokens of the record (CLS and padding never included):
  ``mean`` = mean over all kept tokens; ``max`` = element-wise max; ``cls`` = the CLS vector (for a tiled record,
  the mean of its windows' CLS vectors); ``none`` = one row per token (``token_index`` in the record's
  tokenization, ``nt_start``/``nt_end`` 0-based offsets in the embedded sequence).
- ``rc_average``: the same pooled embedding of the reverse complement, averaged with the forward one.
- Empty records (``status = empty``) and records without any A/C/G/T (``status = all_n``) produce a row with a
  null embedding; they never reach the model.

NTv3 (one token per base, no CLS; ``species`` required for post-trained models):

- the default embedding is the model's final per-base embedding (``layers`` ``"final"``, the up-sampling
  tower's output); ``layers`` 0..L pick Transformer outputs instead (0 = Transformer input, i = block i, -1 =
  last), which have one vector per block of ``2**num_downsamples`` bases: each base takes its block's vector
  (pooling then weights a block by its kept bases; ``pool="none"`` repeats it per base). Layers of different
  widths cannot be combined in one run.
- records are tiled in bases with the same rule (windows of 1 Mb by default, or ``window``), a window shorter
  than a multiple of ``2**num_downsamples`` is padded with ``N`` at its end, to the next multiple only (batches
  hold windows of one padded length, so a record's embedding never depends on what it is batched with);
  padding is never pooled. ``cls`` pooling does not exist (no CLS token).

Throughput: windows are collected in bounded chunks (a token budget, so memory stays flat for any input size,
including single records of chromosome size), sorted by length within the chunk, grouped into batches by a
token budget (batch size x padded length) and run; rows come back in input order. Records are read and
tokenized in a reader thread and rows written in a writer thread while the model runs (the engine's threads,
``pipelines/engine.py``, which also provides shards, the ``--resume`` journal and the part manifest); the command
is :func:`run_embed` over one :class:`~ntk.pipelines.options.EmbedOptions`.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import polars as pl
import torch

from .. import __version__
from ..errors import InputError, NtkError
from ..io.fasta import IndexedFasta, iter_fasta
from ..io.intervals import Interval, parse_region
from ..io.tables import NpyStreamWriter, ParquetStreamWriter, TsvStreamWriter
from ..model.tokenizer import N_CODE, NucleotideTokenizer, reverse_complement_codes, sequence_codes
from ..plan.batching import auto_token_budget, by_token_budget
from ..plan.threads import background
from .engine import open_journal, open_model, shard_block, write_part_manifest, written_behind
from .options import EmbedOptions
from .shards import manifest_path
from .family import ntv3_species_id
from ..plan.windows import Blender, Window, tile

BLEND = "linear"  # how per-token rows of neighbouring windows are joined (plan/windows.py)

POOLINGS = ("mean", "max", "cls", "none")
NTV3_FINAL = "final"  # NTv3: the final per-base embedding (default layer)
FORMATS = ("parquet", "npy")
STATUS_OK, STATUS_EMPTY, STATUS_ALL_N = "ok", "empty", "all_n"
CROP_FRACTION = 1 / 8  # of the window, on each side: windows overlap by a quarter

RECORD_SCHEMA = {
    "name": pl.String, "chrom": pl.String, "start": pl.Int64, "end": pl.Int64, "strand": pl.String,
    "length": pl.Int64, "n_tokens": pl.Int64, "status": pl.String,
}
TOKEN_SCHEMA = {"token_index": pl.Int64, "nt_start": pl.Int64, "nt_end": pl.Int64}


# ------------------------------------------------------------------------------------------------
# inputs

@dataclass
class EmbedInput:
    """One sequence to embed, as it will be embedded (a minus-strand region is already reverse-complemented).

    ``chrom``/``start``/``end``/``strand`` describe where it came from (0-based half-open); for a FASTA record
    they are its name, 0 and its length, strand ``.``."""

    name: str
    sequence: str | np.ndarray
    chrom: str | None = None
    start: int | None = None
    end: int | None = None
    strand: str = "."


def fasta_inputs(path: str) -> Iterator[EmbedInput]:
    """Every record of a FASTA file (plain, gzip, bgzip) or ``-`` (stdin), streamed."""
    for rec in iter_fasta(path):
        yield EmbedInput(rec.name, rec.sequence, rec.name, 0, len(rec.sequence), ".")


def region_inputs(fasta: IndexedFasta, regions: Iterable[Interval | str]) -> Iterator[EmbedInput]:
    """Regions of an indexed FASTA; minus-strand regions are reverse-complemented. Region strings are
    samtools-style (1-based inclusive); ``Interval`` objects (e.g. from ``read_bed``) are 0-based."""
    for iv in regions:
        if isinstance(iv, str):
            iv = parse_region(iv, fasta.lengths)
        elif iv.chrom not in fasta.lengths:
            raise InputError(f"region {iv.region_string()}: unknown contig {iv.chrom!r} in {fasta.path}")
        codes = sequence_codes(fasta.fetch(iv.chrom, iv.start, iv.end))
        if iv.strand == "-":
            codes = reverse_complement_codes(codes)
        name = iv.name if iv.name not in (".", "") else iv.region_string()
        yield EmbedInput(name, codes, iv.chrom, iv.start, iv.end, iv.strand)


def _as_input(x, i: int) -> EmbedInput:
    if isinstance(x, EmbedInput):
        return x
    if isinstance(x, (str, bytes, np.ndarray)):
        seq = x.decode() if isinstance(x, bytes) else x
        return EmbedInput(f"seq{i + 1}", seq, None, None, None, ".")
    name, seq = x
    return EmbedInput(str(name), seq, None, None, None, ".")


def normalise_layers(layers: int | str | Sequence[int | str] | None, num_layers: int) -> list[int]:
    """HF hidden-state indices 0..L (L = after the final LayerNorm); negatives count from the end (-1 = L).
    Accepts ints, strings and comma-separated lists; duplicates are dropped, order kept."""
    if layers is None:
        layers = [-1]
    if isinstance(layers, (int, str)):
        layers = [layers]
    out: list[int] = []
    for item in layers:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                v = int(part)
            except ValueError:
                raise NtkError(f"--layer {part!r}: expected an integer (0..{num_layers}, or negative from the "
                               "end: -1 = last, after the final layer norm)") from None
            idx = v if v >= 0 else num_layers + 1 + v
            if not 0 <= idx <= num_layers:
                raise NtkError(f"--layer {v}: out of range for a {num_layers}-layer model "
                               f"(0..{num_layers} or -1..-{num_layers + 1})")
            if idx not in out:
                out.append(idx)
    if not out:
        raise NtkError("--layer: no layer given")
    return out


def tokenize_long(tokenizer: NucleotideTokenizer, codes: np.ndarray, block: int = 1 << 20
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of a whole record (no CLS): ``(ids int32, starts int64)``, identical to
    ``tokenizer.tokenize_codes(codes)`` but computed in blocks of ``block`` nt so that memory stays a few bytes
    per nucleotide for chromosome-size records. A block is cut where the tokenization restarts: after an N, or
    at a 6-mer boundary of an ACGT run (the run's trailing single-nucleotide tokens are re-read with the next
    block)."""
    block = max(int(block), 6)
    n = int(codes.shape[0])
    if n <= block:
        ids, starts, _ = tokenizer.tokenize_codes(codes, add_cls=False)
        return ids, starts
    n_id = tokenizer.single_offset + N_CODE
    id_parts, start_parts = [], []
    a = 0
    while a < n:
        b = min(a + block, n)
        ids, starts, ends = tokenizer.tokenize_codes(codes[a:b], add_cls=False)
        if b < n and codes[b - 1] != N_CODE and codes[b] != N_CODE:
            keep = (ids < tokenizer.single_offset) | (ids == n_id)
            k = int(np.flatnonzero(keep)[-1]) + 1
            ids, starts, ends = ids[:k], starts[:k], ends[:k]
            nxt = a + int(ends[-1])
        else:
            nxt = b
        id_parts.append(ids)
        start_parts.append(starts + a)
        a = nxt
    return np.concatenate(id_parts), np.concatenate(start_parts)


# ------------------------------------------------------------------------------------------------
# work units

@dataclass
class _View:
    """One strand of one record: its tokens and pooling accumulators."""

    ids: np.ndarray
    starts: np.ndarray
    sum: np.ndarray | None = None
    count: int = 0
    max: np.ndarray | None = None
    cls_sum: np.ndarray | None = None
    n_windows: int = 0
    pieces: dict[int, np.ndarray] = field(default_factory=dict)  # pool none: window seq -> kept rows
    # pool none: windows run but not yet blended (index -> window, rows), the next index to blend, how many
    n_win: int = 0
    next_win: int = 0
    waiting: dict[int, tuple] = field(default_factory=dict)
    blender: Blender = field(default_factory=lambda: Blender(BLEND))


@dataclass
class _Record:
    meta: tuple  # name, chrom, start, end, strand
    length: int
    n_tokens: int
    status: str
    views: list[_View]
    remaining: int  # windows not yet run


@dataclass
class _Window:
    record: _Record
    view: _View
    seq: int  # position in the window stream (restores order)
    start: int  # token range [start, end) of the view (no CLS)
    end: int
    keep_start: int
    keep_end: int
    index: int = 0  # position among the view's windows

    @property
    def tile(self) -> Window:
        return Window("", self.start, self.end, self.keep_start, self.keep_end)

    @property
    def n_tokens(self) -> int:  # incl. CLS
        return self.end - self.start + 1


@dataclass
class EmbedBlock:
    """Rows ready to write. ``records``: one entry per record (columns of ``RECORD_SCHEMA``); ``row_record``:
    the record of every row; ``tokens``: ``token_index nt_start nt_end`` per row (``pool="none"`` only);
    ``embeddings``: ``[rows, n_layers, hidden]`` float32, NaN where ``status != ok``."""

    records: dict[str, list]
    row_record: np.ndarray
    tokens: dict[str, np.ndarray] | None
    embeddings: np.ndarray

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def to_polars(self, embedding_columns: Sequence[str] = ("embedding",)) -> pl.DataFrame:
        """Table with null embeddings (and token columns) where ``status != ok``."""
        df = pl.DataFrame(self.records, schema=RECORD_SCHEMA)[self.row_record]
        ok = pl.col("status") == STATUS_OK
        cols = []
        if self.tokens is not None:
            cols += [pl.when(ok).then(pl.Series(k, v, dtype=TOKEN_SCHEMA[k])).alias(k) for k, v in self.tokens.items()]
        for j, name in enumerate(embedding_columns):
            s = pl.Series(name, self.embeddings[:, j, :]).cast(pl.List(pl.Float32))
            cols.append(pl.when(ok).then(s).alias(name))
        return df.with_columns(cols) if cols else df


@dataclass
class EmbedStats:
    records: int = 0
    ok: int = 0
    empty: int = 0
    all_n: int = 0
    nucleotides: int = 0
    tokens: int = 0  # DNA tokens of the embedded records (both strands with rc_average)
    windows: int = 0
    batches: int = 0
    padded_tokens: int = 0  # batch x padded length, summed
    real_tokens: int = 0  # incl. CLS
    rows: int = 0
    seconds: float = 0.0
    resume: dict | None = None  # --resume: units reused / computed, tokens per unit
    compile: dict | None = None  # --compile: mode, static shape, batches compiled / eager
    shard_records: tuple[int, int] | None = None  # --shard: the records [lo, hi) of this part

    @property
    def padding_fraction(self) -> float:
        return 1 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0


# ------------------------------------------------------------------------------------------------
# the engine

class Embedder:
    """Turns a stream of :class:`EmbedInput` into a stream of :class:`EmbedBlock` (input order).

    ``batch_size``: windows per forward pass (None = fill ``token_budget``, itself chosen from the device when
    None). ``bucket=False`` is the reference for benchmarks, batched as an HF loop does: input order, a fixed
    number of windows per batch (``batch_size``, else as many as the budget allows at the chunk's longest window),
    each batch padded to its own longest window (dynamic padding, ``DataCollatorWithPadding``)."""

    def __init__(self, model, layers=None, pool: str = "mean", rc_average: bool = False,
                 batch_size: int | None = None, token_budget: int | None = None, crop: int | None = None,
                 chunk_tokens: int | None = None, bucket: bool = True, tokenize_block: int = 1 << 20,
                 species: str | None = None, window: int | None = None, compile: str = "off"):
        if pool not in POOLINGS:
            raise NtkError(f"--pool {pool!r}: expected one of {', '.join(POOLINGS)}")
        if rc_average and pool == "none":
            raise NtkError("--rc-average needs a pooled embedding (tokens of the two strands do not correspond); "
                           "use --pool mean|max|cls")
        self.model = model
        cfg = model.config
        self.ntv3 = _is_ntv3(model)
        self.species_id = None
        if self.ntv3:
            self.layers, self.hidden_size = ntv3_layers(layers, cfg)
            if pool == "cls":
                raise NtkError("--pool cls: NTv3 has no CLS token; use --pool mean|max|none")
            self.species_id = ntv3_species_id(model, species)
            self.unit = cfg.window_unit
            self.window = cfg.check_window(window, "embed")
        else:
            if species is not None:
                raise NtkError("--species: only NTv3 post-trained models are conditioned on a species")
            self.layers = normalise_layers(layers, cfg.num_hidden_layers)
            self.hidden_size = cfg.hidden_size
            self.window = cfg.check_window(window, "embed")  # DNA tokens per window (CLS is the +1)
        self.pool = pool
        self.rc_average = rc_average
        self.tokenizer: NucleotideTokenizer = model.tokenizer
        self.crop = int(self.window * CROP_FRACTION) if crop is None else int(crop)
        if not 0 <= 2 * self.crop < self.window:
            raise NtkError(f"crop {self.crop} must be >= 0 and less than half the window ({self.window} tokens)")
        self.batch_size = batch_size
        self.token_budget = token_budget or auto_token_budget(model.device.type, self.hidden_size,
                                                              cfg.num_hidden_layers)
        self.compiled = None  # --compile: the unpadded forward, for one static shape (ntk/model/compiled.py)
        if compile != "off":
            from ..model.compiled import StaticCompiled, check_compile

            check_compile(compile, model.device)
            if self.ntv3:
                raise NtkError("--compile: NTv3 models run eager for now (compilation covers the Nucleotide "
                               "Transformer forward); run without --compile")
            self.compiled = StaticCompiled(lambda ids: self._forward(ids, None), compile,
                                           rows_for=lambda T: self.batch_size or max(1, self.token_budget // T))
        width = len(self.layers) * self.hidden_size
        if chunk_tokens is None:
            chunk_tokens = max(self.token_budget * 8, 1 << 17)
            if pool == "none":  # the chunk's per-token rows are held until written: ~256 MB of float32
                chunk_tokens = min(chunk_tokens, max((1 << 26) // width, self.window + 1))
        self.chunk_tokens = chunk_tokens
        self.max_pending = 1 << 15
        self.bucket = bucket
        self.tokenize_block = tokenize_block
        self.stats = EmbedStats()

    @property
    def embedding_columns(self) -> list[str]:
        if len(self.layers) == 1:
            return ["embedding"]
        return [f"embedding_{i}" if i == NTV3_FINAL else f"embedding_layer{i}" for i in self.layers]

    # -- records and windows --------------------------------------------------------------------
    def _start_record(self, inp: EmbedInput) -> tuple[_Record, list[_Window]]:
        try:
            codes = sequence_codes(inp.sequence)
        except ValueError as e:
            raise InputError(f"sequence {inp.name!r}: {e}") from None
        length = int(codes.shape[0])
        if length == 0:
            status = STATUS_EMPTY
        elif not bool((codes != N_CODE).any()):
            status = STATUS_ALL_N
        else:
            status = STATUS_OK
        views: list[_View] = []
        windows: list[_Window] = []
        meta = (inp.name, inp.chrom, inp.start, inp.end, inp.strand)
        rec = _Record(meta, length, length, status, views, 0)  # an all-N record has one token per N
        if status == STATUS_OK:
            strands = [codes, reverse_complement_codes(codes)] if self.rc_average else [codes]
            for c in strands:
                v = _View(*(self._tokenize_ntv3(c) if self.ntv3 else tokenize_long(self.tokenizer, c,
                                                                                     self.tokenize_block)))
                views.append(v)
                tiles = tile(0, len(v.ids), self.window, self.crop, unit=1)
                v.n_win = len(tiles)
                for k, w in enumerate(tiles):
                    windows.append(_Window(rec, v, 0, w.start, w.end, w.keep_start, w.keep_end, k))
            rec.n_tokens = len(views[0].ids)
        rec.remaining = len(windows)
        st = self.stats
        st.records += 1
        st.nucleotides += length
        setattr(st, status, getattr(st, status) + 1)
        st.tokens += sum(len(v.ids) for v in views)
        st.windows += len(windows)
        return rec, windows

    def _tokenize_ntv3(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, starts, _ = self.tokenizer.tokenize_codes(codes)
        return ids, starts

    # -- model ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor, unpadded: bool = False) -> torch.Tensor:
        """[B, T, n_layers, H] float32. ``unpadded``: no position is padded (the compiled forward may take it)."""
        if self.compiled is not None:
            return self.compiled(ids) if unpadded else self.compiled.eager(self._forward, ids, mask)
        return self._forward(ids, mask)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """:meth:`_hidden`'s forward; ``mask`` None: nothing padded (NT only)."""
        m = self.model
        if self.ntv3:
            want_hidden = any(i != NTV3_FINAL for i in self.layers)
            out = m(ids, species_ids=self.species_id, output_hidden_states=want_hidden, heads=False)
            cols = [out.embedding if i == NTV3_FINAL else out.hidden_states[i].repeat_interleave(self.unit, dim=1)
                    for i in self.layers]
            return torch.stack([c.float() for c in cols], dim=2)
        unpadded = mask is None
        if len(self.layers) == 1:
            return m.embed(ids, mask, layer=self.layers[0], unpadded=unpadded).float().unsqueeze(2)
        out = m(ids, attention_mask=mask, output_hidden_states=True, heads=False, unpadded=unpadded)
        return torch.stack([out.hidden_states[i].float() for i in self.layers], dim=2)

    def _run_batch(self, batch: list[_Window], pad_to: int | None = None) -> None:
        B = len(batch)
        T = max(w.n_tokens for w in batch) if pad_to is None else pad_to
        tok = self.tokenizer
        off = 1  # CLS first
        if self.ntv3:  # no CLS; padded with N (never pooled) up to a multiple of the window unit
            off = 0
            T = -(-(T - 1) // self.unit) * self.unit
            ids = np.full((B, T), tok.n_id, dtype=np.int64)
        else:
            ids = np.full((B, T), tok.pad_id, dtype=np.int64)
            ids[:, 0] = tok.cls_id
        keep = np.zeros((B, T), dtype=bool)
        for i, w in enumerate(batch):
            ids[i, off:off + w.end - w.start] = w.view.ids[w.start:w.end]
            keep[i, off + w.keep_start - w.start:off + w.keep_end - w.start] = True
        dev = self.model.device
        ids_t = torch.from_numpy(ids).to(dev)
        mask_t = ids_t != tok.pad_id
        h = self._hidden(ids_t, mask_t, unpadded=not self.ntv3 and not (ids == tok.pad_id).any())
        keep_t = torch.from_numpy(keep).to(dev)
        st = self.stats
        st.batches += 1
        st.padded_tokens += B * T
        st.real_tokens += sum(w.n_tokens for w in batch)
        if self.pool == "none":
            hc = h.cpu().numpy()
            for i, w in enumerate(batch):
                self._blend_in(w, hc[i, off:off + w.end - w.start])
        else:
            with torch.inference_mode():
                if self.pool == "mean":
                    part = (h * keep_t[:, :, None, None]).sum(1).double().cpu().numpy()
                elif self.pool == "max":
                    part = h.masked_fill(~keep_t[:, :, None, None], -math.inf).amax(1).cpu().numpy()
                else:  # cls
                    part = h[:, 0].double().cpu().numpy()
            counts = keep.sum(1)
            for i, w in enumerate(batch):
                v = w.view
                if self.pool == "mean":
                    v.sum = part[i] if v.sum is None else v.sum + part[i]
                    v.count += int(counts[i])
                elif self.pool == "max":
                    v.max = part[i] if v.max is None else np.maximum(v.max, part[i])
                else:
                    v.cls_sum = part[i] if v.cls_sum is None else v.cls_sum + part[i]
                    v.n_windows += 1
        for w in batch:
            w.record.remaining -= 1

    @staticmethod
    def _blend_in(w: _Window, rows: np.ndarray) -> None:
        """Per-token rows of a whole window -> the view's blended kept rows, in window order."""
        v = w.view
        v.waiting[w.index] = (w, rows)
        while v.next_win in v.waiting:
            ww, rr = v.waiting.pop(v.next_win)
            for _, kept, seq in v.blender.push(ww.tile, rr, ww.seq):
                v.pieces[seq] = kept
            v.next_win += 1
        if v.next_win == v.n_win:
            for _, kept, seq in v.blender.flush():
                v.pieces[seq] = kept

    def _run_chunk(self, chunk: list[_Window]) -> None:
        if not chunk:
            return
        budget = self.token_budget if self.batch_size is None else math.inf
        if self.ntv3:  # N padding changes the output: batch only windows of the same padded length
            items = sorted(chunk, key=lambda w: -w.n_tokens)
            for _, group in itertools.groupby(items, key=lambda w: -(-(w.n_tokens - 1) // self.unit)):
                for batch in by_token_budget(group, lambda w: w.n_tokens, budget, self.batch_size):
                    self._run_batch(batch)
            return
        if self.bucket:
            items = sorted(chunk, key=lambda w: -w.n_tokens)  # longest first: memory peaks show up at once
            for batch in by_token_budget(items, lambda w: w.n_tokens, budget, self.batch_size):
                self._run_batch(batch)
        else:
            size = self.batch_size or max(1, int(budget // max(w.n_tokens for w in chunk)))
            for i in range(0, len(chunk), size):
                self._run_batch(chunk[i:i + size])  # padded to this batch's longest window

    # -- output rows ----------------------------------------------------------------------------
    def _pooled(self, rec: _Record) -> np.ndarray:
        per_view = []
        for v in rec.views:
            if self.pool == "mean":
                per_view.append(v.sum / v.count)
            elif self.pool == "max":
                per_view.append(v.max.astype(np.float64))
            else:
                per_view.append(v.cls_sum / v.n_windows)
        return np.mean(per_view, axis=0).astype(np.float32)

    def _emit(self, pending: list[_Record]) -> EmbedBlock | None:
        """Rows of the finished records at the front of ``pending`` (and, for ``none``, the finished tokens
        of the record still in progress)."""
        records: dict[str, list] = {k: [] for k in RECORD_SCHEMA}
        counts: list[int] = []
        tokens: dict[str, list] = {k: [] for k in TOKEN_SCHEMA}
        embs: list[np.ndarray] = []
        missing = np.full((1, len(self.layers), self.hidden_size), np.nan, np.float32)
        done = 0
        for rec in pending:
            complete = rec.remaining == 0
            if rec.status != STATUS_OK:
                n, rows, tok = 1, [missing], (np.full(1, -1),) * 3
            elif self.pool != "none":
                n, rows, tok = (1, [self._pooled(rec)[None]], None) if complete else (0, [], None)
            else:
                v = rec.views[0]
                rows = [v.pieces.pop(k) for k in sorted(v.pieces)]
                n = sum(len(r) for r in rows)
                first = v.count  # tokens of this record already written
                v.count += n
                ids = v.ids[first:first + n]
                ns = v.starts[first:first + n]
                width = 1 if self.ntv3 else np.where(ids < self.tokenizer.single_offset, 6, 1)
                tok = (np.arange(first, first + n), ns, ns + width)
            if n:
                for k, val in zip(RECORD_SCHEMA, (*rec.meta, rec.length, rec.n_tokens, rec.status)):
                    records[k].append(val)
                counts.append(n)
                embs.extend(rows)
                if tok is not None:
                    for k, arr in zip(TOKEN_SCHEMA, tok):
                        tokens[k].append(arr)
            if not complete:
                break
            done += 1
        del pending[:done]
        if not counts:
            return None
        emb = np.concatenate(embs).astype(np.float32, copy=False)
        self.stats.rows += emb.shape[0]
        row_record = np.repeat(np.arange(len(counts)), counts)
        tok_cols = ({k: np.concatenate(v).astype(np.int64) for k, v in tokens.items()}
                    if self.pool == "none" else None)
        return EmbedBlock(records, row_record, tok_cols, emb)

    # -- shards ---------------------------------------------------------------------------------
    def plan_shard(self, inputs: Iterable, shard: tuple[int, int]) -> tuple[int, int]:
        """Records ``[lo, hi)`` of shard ``I/N`` of ``inputs``: the engine's shard of the units of :meth:`run_units`
        (contiguous, balanced by their windows' tokens), so that every window of the shard runs in the same batch as
        in the unsharded run (batch composition changes float rounding) and the merged rows are identical.
        Tokenizes the inputs once (no model work)."""
        feed = _Feed(self, None, lambda unit: True)  # every unit skipped: tokenized, never run
        ends: list[int] = []  # records at the end of each unit
        n = 0
        for i, x in enumerate(inputs):
            n = i + 1
            for _, _, done in feed.record(*self._start_record(_as_input(x, i))):
                if done:
                    ends.append(n)
        for _, _, done in feed.finish():
            if done and (not ends or ends[-1] < n):
                ends.append(n)
        self.stats = EmbedStats()
        lo, hi = shard_block(feed.unit_tokens[:len(ends)], shard)
        return (ends[lo - 1] if lo else 0), (ends[hi - 1] if hi else 0)

    # -- driver ---------------------------------------------------------------------------------
    def run(self, inputs: Iterable, progress: Callable[[EmbedStats], None] | None = None) -> Iterator[EmbedBlock]:
        for _, block, _ in self.run_units(inputs, progress):
            if block is not None:
                yield block

    def run_units(self, inputs: Iterable, progress: Callable[[EmbedStats], None] | None = None,
                  skip: Callable[[int], bool] | None = None) -> Iterator[tuple[int, EmbedBlock | None, bool]]:
        """:meth:`run`, as events ``(unit, block, unit_done)``. A *unit* is the records between two chunk flushes
        at a record end (where the engine holds no state: the unit's windows run in exactly the same batches
        whatever ran before, which is what shards and ``--resume`` are cut by). Units for which ``skip(unit)``
        is true are tokenized to find their end but not run (their events carry no block); the last event of
        every unit has ``unit_done`` set. Records are read and tokenized in a reader thread (the engine's), a few
        ahead of the model."""
        feed = _Feed(self, progress, skip)
        records = background((self._start_record(_as_input(x, i)) for i, x in enumerate(inputs)), 4)
        try:
            for rec, windows in records:
                yield from feed.record(rec, windows)
        finally:
            records.close(timeout=10.0)
        yield from feed.finish()


class _Feed:
    """The scheduling state of :meth:`Embedder.run_units`: records' windows are collected into a chunk of about
    ``chunk_tokens`` tokens, which is run (sorted and batched) when full; rows are emitted once their records
    are complete. ``unit_tokens``: the tokens of each unit (the shard weights)."""

    def __init__(self, emb: Embedder, progress, skip):
        self.emb, self.progress, self.skip = emb, progress, skip
        self.t0 = time.perf_counter()
        self.pending: list[_Record] = []
        self.chunk: list[_Window] = []
        self.chunk_tokens = 0
        self.seq = self.unit = 0
        self.skipping = skip is not None and skip(0)
        self.n_pending = 0  # records not yet emitted (= len(pending) when not skipping)
        self.unit_tokens = [0]

    def _flush(self) -> EmbedBlock | None:
        emb = self.emb
        if not self.skipping:
            emb._run_chunk(self.chunk)
        self.chunk, self.chunk_tokens = [], 0
        block = None if self.skipping else emb._emit(self.pending)
        emb.stats.seconds = time.perf_counter() - self.t0
        if self.progress is not None:
            self.progress(emb.stats)
        return block

    def record(self, rec: _Record, windows: list[_Window]) -> Iterator[tuple[int, EmbedBlock | None, bool]]:
        self.n_pending += 1
        if not self.skipping:
            self.pending.append(rec)
        for k, w in enumerate(windows):
            w.seq = self.seq
            self.seq += 1
            if not self.skipping:
                self.chunk.append(w)
            self.chunk_tokens += w.n_tokens
            self.unit_tokens[-1] += w.n_tokens
            if self.chunk_tokens >= 2 * self.emb.chunk_tokens:  # inside a record longer than a chunk
                block = self._flush()
                self.n_pending = 1 if k + 1 < len(windows) else 0
                if block is not None:
                    yield self.unit, block, False
        if self.chunk_tokens >= self.emb.chunk_tokens or self.n_pending >= self.emb.max_pending:
            block = self._flush()  # at a record end: a shard may start at the next record
            yield self.unit, block, True
            self.unit, self.n_pending = self.unit + 1, 0
            self.unit_tokens.append(0)
            self.skipping = self.skip is not None and self.skip(self.unit)

    def finish(self) -> Iterator[tuple[int, EmbedBlock | None, bool]]:
        yield self.unit, self._flush(), True


# ------------------------------------------------------------------------------------------------
# public entry points

def _is_ntv3(model) -> bool:
    from ..model.ntv3 import NTv3

    return isinstance(model, NTv3)


def ntv3_layers(layers, cfg) -> tuple[list, int]:
    """NTv3 ``--layer`` values -> (layers, width): ``final`` (default) or Transformer outputs 0..L (negatives
    from the end, -1 = last block)."""
    if layers is None:
        layers = [NTV3_FINAL]
    if isinstance(layers, (int, str)):
        layers = [layers]
    out: list = []
    for item in layers:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if part in (NTV3_FINAL, "embedding"):
                v = NTV3_FINAL
            else:
                try:
                    v = normalise_layers(part, cfg.num_layers)[0]
                except NtkError as e:
                    raise NtkError(f"{e} (NTv3: 'final' = the per-base embedding, the default; 0..{cfg.num_layers} "
                                   "= Transformer outputs)") from None
            if v not in out:
                out.append(v)
    if not out:
        raise NtkError("--layer: no layer given")
    widths = {cfg.conv_init_embed_dim if v == NTV3_FINAL else cfg.embed_dim for v in out}
    if len(widths) > 1:
        raise NtkError(f"--layer: the final per-base embedding ({cfg.conv_init_embed_dim} wide) and Transformer "
                       f"layers ({cfg.embed_dim} wide) cannot be combined in one run; run them separately")
    return out, widths.pop()


def _collect(model, inputs: Iterable, options: dict) -> pl.DataFrame:
    emb = Embedder(model, **options)
    frames = [b.to_polars(emb.embedding_columns) for b in emb.run(inputs)]
    if frames:
        return pl.concat(frames)
    schema = dict(RECORD_SCHEMA) | (TOKEN_SCHEMA if emb.pool == "none" else {})
    return pl.DataFrame(schema=schema | {c: pl.List(pl.Float32) for c in emb.embedding_columns})


def embed_sequences(model, sequences: Iterable, **options) -> pl.DataFrame:
    """Embed sequences in memory and return the table (columns as in the Parquet output).

    ``sequences``: strings, ``(name, sequence)`` pairs or :class:`EmbedInput`. Options: ``layers``, ``pool``,
    ``rc_average``, ``batch_size``, ``token_budget``, ``crop`` (tokens), ``chunk_tokens``."""
    return _collect(model, sequences, options)


def embed_regions(model, reference: str | Path | IndexedFasta, regions: Iterable[Interval | str],
                  **options) -> pl.DataFrame:
    """Embed genomic regions of an indexed FASTA (minus strand reverse-complemented) and return the table."""
    fasta = reference if isinstance(reference, IndexedFasta) else IndexedFasta(reference)
    return _collect(model, region_inputs(fasta, regions), options)


def output_metadata(emb: Embedder, model_label: str | None = None, precision: str | None = None) -> dict[str, str]:
    cfg = emb.model.config
    return {
        **({"precision": precision} if precision else {}),
        "ntk_version": __version__,
        "model": model_label or getattr(emb.model, "source", "") or "",
        "model_fingerprint": cfg.fingerprint(),
        "model_family": cfg.family,
        "layers": ",".join(str(i) for i in emb.layers),
        "num_hidden_layers": str(cfg.num_hidden_layers),
        "embedding_columns": ",".join(emb.embedding_columns),
        "embedding_dim": str(emb.hidden_size),
        "pooling": emb.pool,
        "rc_average": str(emb.rc_average).lower(),
        "window_tokens": str(emb.window if emb.ntv3 else emb.window + 1),
        "crop_tokens": str(emb.crop),
        **({"species": emb.model.species[emb.species_id - (cfg.num_species_special_tokens or 6)]}
           if emb.species_id is not None else {}),
    }


def npy_rows_path(output: str | Path) -> Path:
    """Sidecar of ``--format npy``: ``OUT.npy`` -> ``OUT.rows.tsv`` (one line per matrix row)."""
    p = Path(output)
    return p.with_name((p.name[:-4] if p.name.endswith(".npy") else p.name) + ".rows.tsv")


def write_embeddings(model, inputs: Iterable, output: str | Path, fmt: str = "parquet",
                     model_label: str | None = None, progress: Callable[[EmbedStats], None] | None = None,
                     resume: dict | None = None, precision: str | None = None, **options) -> EmbedStats:
    """Embed ``inputs`` and stream the rows to ``output`` (atomic; ``-`` = stdout for Parquet). Records are read
    and tokenized in a reader thread and rows written in a writer thread while the model runs (the engine's
    overlap, ``pipelines/engine.py``).

    ``fmt="npy"`` writes a float32 matrix ``[rows, hidden]`` (``[rows, n_layers, hidden]`` for several
    layers; NaN rows where ``status != ok``) plus the row table ``OUT.rows.tsv`` without embeddings.

    ``resume`` (a dict: ``sources``, the inputs' roles -> paths; ``options``, those that shape the rows;
    ``shard``) keeps every finished unit of records (see :meth:`Embedder.run_units`) in ``.OUTPUT.ntk-partial/``
    and, when the same run is started again after a kill, embeds only the unfinished units; the returned stats'
    ``resume`` says how many units were reused and computed. The partial directory is removed once ``output`` is
    written. ``precision``: the compute precision to record in the metadata (``fp32``, ``bf16``, ``fp8``...)."""
    if fmt not in FORMATS:
        raise NtkError(f"--format {fmt!r}: expected parquet or npy")
    emb = Embedder(model, **options)
    meta = output_metadata(emb, model_label, precision)
    journal = _embed_journal(emb, output, fmt, resume) if resume is not None else None
    events = emb.run_units(inputs, progress, skip=journal.has if journal is not None else None)
    reused = [0]
    with contextlib.closing(events):  # on a failure: the reader thread stops before the outputs are removed
        _write_events(emb, events, output, fmt, meta, journal, reused)
    emb.stats.rows += reused[0]
    if emb.compiled is not None:
        emb.stats.compile = emb.compiled.info()
    if journal is not None:
        emb.stats.resume = {"units_reused": journal.reused, "units_computed": journal.computed,
                            "chunk_tokens": journal.chunk_bp}
        journal.remove()
    return emb.stats


def _write_events(emb: Embedder, events, output, fmt: str, meta: dict, journal, reused: list[int]) -> None:
    """The rows of ``events`` to Parquet or npy + row table, written in a writer thread."""
    if fmt == "parquet":
        schema = dict(RECORD_SCHEMA) | (TOKEN_SCHEMA if emb.pool == "none" else {})
        schema |= {c: pl.List(pl.Float32) for c in emb.embedding_columns}
        with ParquetStreamWriter(output, schema, meta) as w:
            written_behind(events, _unit_writer(journal, reused,
                                                lambda b: w.write(b.to_polars(emb.embedding_columns))))
    else:
        if str(output) == "-":
            raise NtkError("--format npy writes a file: give -o OUT.npy")
        nl = len(emb.layers)
        shape = (emb.hidden_size,) if nl == 1 else (nl, emb.hidden_size)
        with NpyStreamWriter(output, shape) as w, TsvStreamWriter(npy_rows_path(output)) as rows:
            def write(block: EmbedBlock) -> None:
                w.write(block.embeddings.reshape(len(block), *shape))
                rows.write(block.to_polars(()))
            written_behind(events, _unit_writer(journal, reused, write))


def _unit_writer(journal, reused: list[int], write: Callable[[EmbedBlock], None]) -> Callable:
    """The writer thread's function for the events of :meth:`Embedder.run_units`: blocks are written, and with a
    resume ``journal`` also kept (a unit is done when its last block is); finished units of an earlier run are
    read back from the journal instead (their rows counted in ``reused[0]``)."""
    parts = 0

    def on_event(event) -> None:
        nonlocal parts
        if event is None:
            return
        unit, block, done = event
        if journal is not None and journal.has(unit):  # finished before the run was interrupted
            if done:
                for j in range(int(journal.load(unit)["parts"])):
                    stored = _block_from(journal.load(unit, part=j))
                    reused[0] += len(stored)
                    write(stored)
            return
        if block is not None:
            if journal is not None:
                journal.save(unit, _block_arrays(block), part=parts)
                parts += 1
            write(block)
        if done and journal is not None:
            journal.save(unit, {"parts": np.array(parts)})
            parts = 0
    return on_event


# ------------------------------------------------------------------------------------------------
# --resume: finished units of records kept beside the output

def _embed_journal(emb: Embedder, output: str | Path, fmt: str, resume: dict):
    if str(output) == "-":
        raise NtkError("--resume keeps finished chunks beside the output: give -o FILE, not stdout")
    sources = resume.get("sources") or {}
    if any(v == "-" for v in sources.values()):
        raise NtkError("--resume reads the same input again when restarted: give a file, not stdin")
    opts = {**(resume.get("options") or {}), "layers": emb.layers, "pool": emb.pool, "rc_average": emb.rc_average,
            "crop": emb.crop, "format": fmt}
    if emb.ntv3:
        opts.update(species_id=emb.species_id, window=emb.window)
    return open_journal("embed", fmt, output, resume.get("shard"), sources, emb.model.config.fingerprint(), opts,
                        emb.chunk_tokens, unit="tokens")


def _block_arrays(block: EmbedBlock) -> dict[str, np.ndarray]:
    out = {"records": np.array(json.dumps(block.records)), "row_record": block.row_record,
           "embeddings": block.embeddings}
    for k, v in (block.tokens or {}).items():
        out[f"token:{k}"] = v
    return out


def _block_from(arrays: dict[str, np.ndarray]) -> EmbedBlock:
    tokens = {k[6:]: v for k, v in arrays.items() if k.startswith("token:")} or None
    return EmbedBlock(json.loads(str(arrays["records"])), arrays["row_record"], tokens, arrays["embeddings"])


# ------------------------------------------------------------------------------------------------
# the job: options -> inputs, model, shard, resume -> output (+ part manifest)

@dataclass
class _Inputs:
    """The records of a run: ``make()`` streams them (called again to plan a shard), ``sources`` names the input
    files (manifests, journal), ``total`` counts them when known up front (the progress bar)."""

    make: Callable[[], Iterable[EmbedInput]]
    sources: dict
    total: int | None = None


def check_embed_options(o: EmbedOptions, ranks: bool = False) -> None:
    """Option and output errors, before any input is read or model loaded (``ranks``: under torchrun)."""
    from ..io.atomic import check_writable_target, refuse_inputs_as_outputs

    if o.pool not in POOLINGS:
        raise NtkError(f"--pool {o.pool!r}: expected one of {', '.join(POOLINGS)}")
    if o.fmt not in FORMATS:
        raise NtkError(f"--format {o.fmt!r}: expected parquet or npy")
    if o.rc_average and o.pool == "none":
        raise NtkError("--rc-average needs a pooled embedding: use --pool mean|max|cls")
    if not o.output:
        raise NtkError("give the output file with -o OUT.parquet (or -o OUT.npy --format npy)")
    output = str(o.output)
    if o.resume and (output == "-" or o.input == "-" or o.regions_file == "-"):
        raise NtkError("--resume reads the same input again and keeps finished chunks beside the output: give "
                       "files (not stdin/stdout)")
    if o.shard is not None or ranks:
        if o.shard is not None and ranks:
            raise NtkError("under torchrun each rank takes one shard: leave out --shard")
        if o.fmt != "parquet" or output == "-":
            raise NtkError("--shard/torchrun write Parquet parts to a file: give -o OUT.parquet")
        if o.input == "-" or o.regions_file == "-":
            raise NtkError("--shard/torchrun read the input twice (to cut balanced shards): give a file, "
                           "not stdin")
    if output == "-":  # outputs: refuse early, before any work
        if o.fmt == "npy":
            raise NtkError("--format npy writes a file: give -o OUT.npy")
        if sys.stdout.isatty():
            raise NtkError("-o -: Parquet is binary; redirect stdout to a file or give -o FILE")
    else:
        refuse_inputs_as_outputs([output, npy_rows_path(output) if o.fmt == "npy" else None],
                                 [o.input, o.reference, o.regions_file, o.chr_map])
        check_writable_target(output, o.force)
        if o.fmt == "npy":
            check_writable_target(npy_rows_path(output), o.force)


def plan_inputs(o: EmbedOptions) -> _Inputs:
    """FASTA records (``input``), or the ``-r``/``-R`` regions of ``reference`` (every BED line checked up front)."""
    from ..io.intervals import iter_regions, load_regions, read_bed, read_chr_map

    if o.regions or o.regions_file:
        if o.input and o.reference and o.input != o.reference:
            raise NtkError("with -r/-R give the reference genome once: as INPUT or with --reference")
        ref = o.reference or o.input
        if not ref:
            raise NtkError("-r/-R need the reference genome: --reference GENOME.fa")
        if o.regions_file == "-" and ref == "-":
            raise NtkError("stdin can feed only one input")
        fasta = IndexedFasta(ref)
        cmap = read_chr_map(o.chr_map)
        intervals = load_regions(o.regions, None, fasta.lengths)  # a bad -r fails here
        total = None
        if o.regions_file and o.regions_file != "-":
            total = len(intervals) + sum(1 for _ in read_bed(o.regions_file, fasta.lengths, cmap))
        return _Inputs(lambda: region_inputs(fasta, iter_regions(o.regions, o.regions_file, fasta.lengths, cmap)),
                       {"reference": ref, "regions_file": o.regions_file, "chr_map": o.chr_map}, total)
    if o.reference or o.chr_map:
        raise NtkError("--reference/--chr-map are for -r/-R regions; to embed FASTA records give the "
                       "FASTA as INPUT")
    if not o.input:
        raise NtkError("give a FASTA to embed (or '-' for stdin), or regions with -r/-R --reference")
    if o.input != "-" and not Path(o.input).is_file():
        raise InputError(f"{o.input}: FASTA file not found")
    if o.input != "-" and not os.access(o.input, os.R_OK):
        raise InputError(f"{o.input}: FASTA file is not readable (permission denied)")
    return _Inputs(lambda: fasta_inputs(o.input), {"input": o.input})


def run_embed(o: EmbedOptions, progress: Callable[[EmbedStats], None] | None = None,
              log: Callable[[str], None] | None = None, inputs: _Inputs | None = None) -> EmbedStats:
    """``ntk embed``: options -> inputs, model, shard, resume -> ``o.output`` (+ the part manifest of a shard).
    ``inputs``: planned already (:func:`plan_inputs`); ``log(line)`` gets the shard's record range."""
    check_embed_options(o)
    inputs = inputs or plan_inputs(o)
    m, prec = open_model(o.model, o.device, o.precision, o.threads, task="embed", window=o.window,
                         compile=o.compile)
    run_opts = {"layers": o.layers, "pool": o.pool, "rc_average": o.rc_average, "species": o.species,
                "window": o.window, "batch_size": o.batch_size, "chunk_tokens": o.chunk_tokens, "compile": o.compile}
    emb = Embedder(m, **run_opts)  # fail before any output starts
    label = str(o.model) if isinstance(o.model, (str, os.PathLike)) and str(o.model) else None
    identity = {"layers": o.layers, "pool": o.pool, "rc_average": o.rc_average, "regions": o.regions or None,
                "species": o.species, "window": o.window}
    records: Iterable = inputs.make()
    resume = {"sources": inputs.sources, "options": {"regions": o.regions or None}} if o.resume else None
    if o.shard is not None:
        lo, hi = emb.plan_shard(inputs.make(), o.shard)
        if log is not None:
            log(f"ntk embed: shard {o.shard[0]}/{o.shard[1]}: " + (f"records {lo + 1:,}-{hi:,}" if hi > lo
                                                                  else "no records"))
        records = itertools.islice(records, lo, hi)
        if resume is not None:
            resume = {"sources": inputs.sources, "options": {**identity, "records": [lo, hi]}, "shard": o.shard}
    stats = write_embeddings(m, records, o.output, fmt=o.fmt, model_label=label, progress=progress, resume=resume,
                             precision=f"{prec.name} ({prec.reason})", **run_opts)
    if o.shard is not None:
        stats.shard_records = (lo, hi)
        opts = {**identity, "layers": emb.layers, "chunk_tokens": emb.chunk_tokens}
        write_part_manifest("embed", "parquet", o.shard, inputs.sources, m.config.fingerprint(), opts,
                            {"records": [lo, hi]}, manifest_path(o.output))
    return stats
