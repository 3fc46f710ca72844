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
token budget (batch size x padded length) and run; rows come back in input order.
"""
from __future__ import annotations

import itertools
import json
import math
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
                 species: str | None = None, window: int | None = None):
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
    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, n_layers, H] float32."""
        m = self.model
        if self.ntv3:
            want_hidden = any(i != NTV3_FINAL for i in self.layers)
            out = m(ids, species_ids=self.species_id, output_hidden_states=want_hidden, heads=False)
            cols = [out.embedding if i == NTV3_FINAL else out.hidden_states[i].repeat_interleave(self.unit, dim=1)
                    for i in self.layers]
            return torch.stack([c.float() for c in cols], dim=2)
        if len(self.layers) == 1:
            return m.embed(ids, mask, layer=self.layers[0]).float().unsqueeze(2)
        out = m(ids, attention_mask=mask, output_hidden_states=True, heads=False)
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
        h = self._hidden(ids_t, mask_t)  # [B, T, nl, H]
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
        """Records ``[lo, hi)`` of shard ``I/N`` of ``inputs``: contiguous, balanced by tokens, and cut only where
        an unsharded :meth:`run` empties its chunk at a record end, so that every window of the shard runs in the
        same batch as in the unsharded run (batch composition changes float rounding) and the merged rows are
        identical. Tokenizes the inputs once (no model work)."""
        cuts: list[tuple[int, int]] = []  # (records so far, tokens so far) where run() flushes at a record end
        tokens = chunk_tokens = pending = n = 0
        for i, x in enumerate(inputs):
            _, windows = self._start_record(_as_input(x, i))
            n, pending = i + 1, pending + 1
            for w in windows:
                chunk_tokens += w.n_tokens
                tokens += w.n_tokens
                if chunk_tokens >= 2 * self.chunk_tokens:
                    chunk_tokens, pending = 0, 1
            if chunk_tokens >= self.chunk_tokens or pending >= self.max_pending:
                chunk_tokens = pending = 0
                cuts.append((n, tokens))
        self.stats = EmbedStats()
        i, k = shard
        bounds = [0]
        for j in range(1, k):  # the record-end flush nearest to j/k of the tokens
            target = j * tokens / k
            later = [c for c in cuts if c[0] > bounds[-1]]  # each shard gets work while cuts are left
            best = min(later, key=lambda c: (abs(c[1] - target), c[0]), default=(bounds[-1], 0))[0]
            bounds.append(best)
        bounds.append(n)
        return bounds[i - 1], max(bounds[i - 1], bounds[i])

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
        every unit has ``unit_done`` set."""
        t0 = time.perf_counter()
        pending: list[_Record] = []
        chunk: list[_Window] = []
        chunk_tokens = 0
        seq = 0
        unit = 0
        skipping = skip is not None and skip(0)
        n_pending = 0  # records not yet emitted (= len(pending) when not skipping)

        def flush():
            nonlocal chunk, chunk_tokens
            if not skipping:
                self._run_chunk(chunk)
            chunk, chunk_tokens = [], 0
            block = None if skipping else self._emit(pending)
            self.stats.seconds = time.perf_counter() - t0
            if progress is not None:
                progress(self.stats)
            return block

        for i, x in enumerate(inputs):
            rec, windows = self._start_record(_as_input(x, i))
            n_pending += 1
            if not skipping:
                pending.append(rec)
            for k, w in enumerate(windows):
                w.seq = seq
                seq += 1
                if not skipping:
                    chunk.append(w)
                chunk_tokens += w.n_tokens
                if chunk_tokens >= 2 * self.chunk_tokens:  # inside a record longer than a chunk
                    block = flush()
                    n_pending = 1 if k + 1 < len(windows) else 0
                    if block is not None:
                        yield unit, block, False
            if chunk_tokens >= self.chunk_tokens or n_pending >= self.max_pending:
                block = flush()  # at a record end: a shard may start at the next record (see plan_shard)
                yield unit, block, True
                unit, n_pending = unit + 1, 0
                skipping = skip is not None and skip(unit)
        yield unit, flush(), True


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


def output_metadata(emb: Embedder, model_label: str | None = None) -> dict[str, str]:
    cfg = emb.model.config
    return {
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
                     resume: dict | None = None, **options) -> EmbedStats:
    """Embed ``inputs`` and stream the rows to ``output`` (atomic; ``-`` = stdout for Parquet).

    ``fmt="npy"`` writes a float32 matrix ``[rows, hidden]`` (``[rows, n_layers, hidden]`` for several
    layers; NaN rows where ``status != ok``) plus the row table ``OUT.rows.tsv`` without embeddings.

    ``resume`` (a dict: the inputs' roles -> paths, and the options that shape the rows) keeps every finished
    unit of records (see :meth:`Embedder.run_units`) in ``.OUTPUT.ntk-partial/`` and, when the same run is
    started again after a kill, embeds only the unfinished units; ``resume["info"]`` receives the units reused
    and computed. The partial directory is removed once ``output`` is written."""
    if fmt not in FORMATS:
        raise NtkError(f"--format {fmt!r}: expected parquet or npy")
    emb = Embedder(model, **options)
    meta = output_metadata(emb, model_label)
    journal = None
    if resume is not None:
        journal = _embed_journal(emb, output, fmt, resume)
    blocks = emb.run(inputs, progress) if journal is None else _resumed_blocks(emb, inputs, progress, journal)
    if fmt == "parquet":
        schema = dict(RECORD_SCHEMA) | (TOKEN_SCHEMA if emb.pool == "none" else {})
        schema |= {c: pl.List(pl.Float32) for c in emb.embedding_columns}
        with ParquetStreamWriter(output, schema, meta) as w:
            for block in blocks:
                w.write(block.to_polars(emb.embedding_columns))
    else:
        if str(output) == "-":
            raise NtkError("--format npy writes a file: give -o OUT.npy")
        nl = len(emb.layers)
        shape = (emb.hidden_size,) if nl == 1 else (nl, emb.hidden_size)
        with NpyStreamWriter(output, shape) as w, TsvStreamWriter(npy_rows_path(output)) as rows:
            for block in blocks:
                w.write(block.embeddings.reshape(len(block), *shape))
                rows.write(block.to_polars(()))
    if journal is not None:
        resume["info"] = {"units_reused": journal.reused, "units_computed": journal.computed,
                          "chunk_tokens": journal.chunk_bp}
        journal.remove()
    return emb.stats


# ------------------------------------------------------------------------------------------------
# --resume: finished units of records kept beside the output

def _embed_journal(emb: Embedder, output: str | Path, fmt: str, resume: dict):
    from .resume import Journal, partial_dir
    from .shards import make_manifest

    if str(output) == "-":
        raise NtkError("--resume keeps finished chunks beside the output: give -o FILE, not stdout")
    sources = resume.get("sources") or {}
    if any(v == "-" for v in sources.values()):
        raise NtkError("--resume reads the same input again when restarted: give a file, not stdin")
    opts = {**(resume.get("options") or {}), "layers": emb.layers, "pool": emb.pool, "rc_average": emb.rc_average,
            "crop": emb.crop, "format": fmt}
    if emb.ntv3:
        opts.update(species_id=emb.species_id, window=emb.window)
    ident = make_manifest("embed", fmt, resume.get("shard") or (1, 1), sources, emb.model.config.fingerprint(),
                          opts)
    ident.pop("ntk_version")
    return Journal(partial_dir(output), ident, emb.chunk_tokens, unit="tokens")


def _block_arrays(block: EmbedBlock) -> dict[str, np.ndarray]:
    out = {"records": np.array(json.dumps(block.records)), "row_record": block.row_record,
           "embeddings": block.embeddings}
    for k, v in (block.tokens or {}).items():
        out[f"token:{k}"] = v
    return out


def _block_from(arrays: dict[str, np.ndarray]) -> EmbedBlock:
    tokens = {k[6:]: v for k, v in arrays.items() if k.startswith("token:")} or None
    return EmbedBlock(json.loads(str(arrays["records"])), arrays["row_record"], tokens, arrays["embeddings"])


def _resumed_blocks(emb: Embedder, inputs: Iterable, progress, journal) -> Iterator[EmbedBlock]:
    """The blocks of :meth:`Embedder.run`: finished units read back from the journal, the others run and
    committed unit by unit (each block of a unit is kept as it comes; the unit is done when its last is)."""
    parts = 0
    for unit, block, done in emb.run_units(inputs, progress, skip=journal.has):
        if journal.has(unit):
            if done:
                for j in range(int(journal.load(unit)["parts"])):
                    stored = _block_from(journal.load(unit, part=j))
                    emb.stats.rows += len(stored)
                    yield stored
            continue
        if block is not None:
            journal.save(unit, _block_arrays(block), part=parts)
            parts += 1
            yield block
        if done:
            journal.save(unit, {"parts": np.array(parts)})
            parts = 0


def embed_shard(model, make_inputs: Callable[[], Iterable], output: str | Path, shard: tuple[int, int],
                sources: dict, options: dict, batch_size: int | None = None, model_label: str | None = None,
                log: Callable[[str], None] | None = None, chunk_tokens: int | None = None,
                resume: dict | None = None) -> EmbedStats:
    """Shard ``I/N`` of the records from ``make_inputs()`` (called twice: once to plan balanced cuts, once to
    embed) into the Parquet part ``output`` plus its manifest (``OUTPUT.ntk-shard.json``) for ``ntk merge``.
    ``sources``: input role -> path (for the manifest); ``options``: layers, pool, rc_average (+ any other
    option that shapes the rows, recorded in the manifest)."""
    from .shards import make_manifest, manifest_path, write_manifest

    run_opts = {k: options[k] for k in ("layers", "pool", "rc_average")}
    run_opts.update({k: options[k] for k in ("species", "window") if options.get(k) is not None})
    run_opts["chunk_tokens"] = chunk_tokens
    planner = Embedder(model, batch_size=batch_size, **run_opts)
    lo, hi = planner.plan_shard(make_inputs(), shard)
    if log is not None:
        log(f"ntk embed: shard {shard[0]}/{shard[1]}: " + (f"records {lo + 1:,}-{hi:,}" if hi > lo else "no records"))
    if resume is not None:
        resume.update(sources=sources, options={**options, "records": [lo, hi]}, shard=shard)
    stats = write_embeddings(model, itertools.islice(make_inputs(), lo, hi), output, model_label=model_label,
                             batch_size=batch_size, resume=resume, **run_opts)
    opts = {**options, "layers": planner.layers, "chunk_tokens": planner.chunk_tokens}
    write_manifest(make_manifest("embed", "parquet", shard, sources, model.config.fingerprint(), opts,
                                 {"records": [lo, hi]}), manifest_path(output))
    return stats
