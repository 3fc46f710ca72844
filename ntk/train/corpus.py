"""The pretraining corpus: random windows streamed from indexed FASTA files, tokenised and BERT-masked.

- :class:`WindowSampler` draws windows of a fixed number of nucleotides uniformly over the bases of a set of
  intervals of one FASTA (every start position equally likely), fetched one window at a time through the FASTA
  index: memory does not grow with the genome and no chromosome is ever held as a Python string.
- :func:`split_corpus` turns corpora, ``-R``/``-r`` regions and the validation options into training and
  validation samplers (validation intervals are removed from training).
- :class:`MaskedLMStream` yields fixed-shape micro-batches ``{"input_ids", "attention_mask", "labels"}``
  ([B, seq_len]); batch ``i`` of rank ``r`` is a pure function of ``(seed, r, i)``, so the stream is resumable
  exactly (its state is the batch counter) and every torchrun rank has its own stream; :class:`Prefetcher`
  builds the next batches in a background thread while the model trains.

A window is ``6 * (seq_len - 1)`` nt: an N-free window tokenises to exactly ``seq_len`` tokens (``<cls>`` +
6-mers); a window with N is longer in tokens (each N is its own token) and is cropped. Windows with more than
``max_n_frac`` N are redrawn. Intervals shorter than one window are not used.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..io.fasta import IndexedFasta
from ..io.intervals import Interval, check_contig_naming, merge_overlapping
from ..plan.threads import background
from ..model.tokenizer import N_CODE, NucleotideTokenizer, reverse_complement_codes, sequence_codes
from .masking import bert_mask

MAX_TRIES = 200  # consecutive N-heavy draws before the corpus is declared unusable
_TRAIN, _VAL, _PROBE = 0, 1, 2


class WindowSampler:
    """Uniform random windows of ``window`` nt over ``intervals`` of one FASTA."""

    def __init__(self, fasta: IndexedFasta, intervals: list[Interval], window: int, label: str):
        self.fasta, self.window, self.label = fasta, window, label
        usable = [iv for iv in intervals if iv.length >= window]
        self.intervals = usable
        self.chroms = [iv.chrom for iv in usable]
        self.starts = np.array([iv.start for iv in usable], dtype=np.int64)
        n_starts = np.array([iv.length - window + 1 for iv in usable], dtype=np.int64)
        self.cum = np.cumsum(n_starts)
        self.n_positions = int(self.cum[-1]) if usable else 0
        self.bases = int(sum(iv.length for iv in usable))

    def __bool__(self) -> bool:
        return self.n_positions > 0

    def draw(self, rng: np.random.Generator) -> tuple[str, int]:
        r = int(rng.integers(self.n_positions))
        i = int(np.searchsorted(self.cum, r, side="right"))
        before = int(self.cum[i - 1]) if i else 0
        return self.chroms[i], int(self.starts[i]) + r - before

    def codes(self, chrom: str, start: int) -> np.ndarray:
        return sequence_codes(self.fasta.fetch(chrom, start, start + self.window))


# -- building the training / validation split ------------------------------------------------------
def subtract(intervals: list[Interval], holes: list[Interval]) -> list[Interval]:
    """``intervals`` minus ``holes`` (both per contig; holes may overlap each other)."""
    by_chrom: dict[str, list[tuple[int, int]]] = {}
    for h in holes:
        by_chrom.setdefault(h.chrom, []).append((h.start, h.end))
    for v in by_chrom.values():
        v.sort()
    out = []
    for iv in intervals:
        cur = iv.start
        for s, e in by_chrom.get(iv.chrom, ()):
            if e <= cur or s >= iv.end:
                continue
            if s > cur:
                out.append(Interval(iv.chrom, cur, s, name=iv.name))
            cur = max(cur, e)
        if cur < iv.end:
            out.append(Interval(iv.chrom, cur, iv.end, name=iv.name))
    return out


@dataclass
class CorpusSplit:
    train: list[WindowSampler]
    val: list[WindowSampler]
    val_source: str  # how the validation set was chosen (for logs)


def split_corpus(paths: list[str], window: int, regions: list[Interval] | None = None,
                 val_chroms: list[str] | None = None, val_regions: list[Interval] | None = None,
                 val_frac: float = 0.01, regions_label: str = "-R/-r regions") -> CorpusSplit:
    """Open the corpora and split them into training and validation samplers.

    - ``regions``: restrict training to these intervals (applied to every corpus holding the contig).
    - ``val_chroms`` / ``val_regions``: held out for validation (and removed from training).
    - neither: the last ``max(val_frac of the corpus, 4 windows)`` nt of the longest training interval of each
      corpus are held out (``val_frac`` 0: no validation set).
    """
    fastas = [IndexedFasta(p) for p in paths]
    all_lengths: dict[str, int] = {}
    for fa in fastas:
        for c in fa.contigs:
            all_lengths.setdefault(c.name, c.length)
    if regions:
        check_contig_naming([iv.chrom for iv in regions], all_lengths, regions_label)
    if val_regions:
        check_contig_naming([iv.chrom for iv in val_regions], all_lengths, "--val-regions")
    if val_chroms:
        check_contig_naming(val_chroms, all_lengths, "--val-chroms")
    train, val = [], []
    explicit_val = bool(val_chroms) or bool(val_regions)
    for path, fa in zip(paths, fastas):
        order = fa.names
        if regions:
            base = merge_overlapping([iv for iv in regions if iv.chrom in fa.lengths], order)
            for iv in base:
                if iv.end > fa.lengths[iv.chrom]:
                    raise InputError(f"{regions_label}: {iv.region_string()} is beyond the end of {iv.chrom} in "
                                     f"{path} (length {fa.lengths[iv.chrom]})")
        else:
            base = [Interval(c.name, 0, c.length) for c in fa.contigs]
        held: list[Interval] = []
        if val_chroms:
            held += [Interval(c, 0, fa.lengths[c]) for c in val_chroms if c in fa.lengths]
        if val_regions:
            held += [iv for iv in val_regions if iv.chrom in fa.lengths]
        held = merge_overlapping(held, order)
        if not explicit_val and val_frac > 0:
            usable = [iv for iv in base if iv.length >= window]
            if usable:
                longest = max(usable, key=lambda iv: iv.length)
                size = max(int(math.ceil(val_frac * sum(iv.length for iv in usable))), 4 * window)
                if longest.length >= size + window:
                    held = [Interval(longest.chrom, longest.end - size, longest.end)]
        train.append(WindowSampler(fa, subtract(base, held), window, path))
        val.append(WindowSampler(fa, held, window, path))
    if val_chroms:
        source = "--val-chroms " + ",".join(val_chroms)
    elif val_regions:
        source = f"--val-regions ({len(val_regions)} intervals)"
    elif any(val):
        source = "held-out tail: " + "; ".join(f"{v.intervals[0].region_string()} of {v.label}" for v in val if v)
    else:
        source = "none"
    if not any(train):
        raise InputError(f"no usable window: every training interval of {', '.join(paths)} is shorter than one "
                         f"window ({window} nt); lower --seq-len or widen the regions")
    if explicit_val and not any(val):
        raise InputError(f"no usable validation window: every interval of {source} is shorter than one window "
                         f"({window} nt); lower --seq-len or choose larger validation regions")
    return CorpusSplit([t for t in train], [v for v in val], source)


# -- the masked-LM stream --------------------------------------------------------------------------
class MaskedLMStream:
    """Resumable iterator of masked-LM micro-batches drawn from one or more :class:`WindowSampler`."""

    def __init__(self, samplers: list[WindowSampler], tokenizer: NucleotideTokenizer, seq_len: int,
                 batch_size: int, seed: int = 0, rank: int = 0, weights: list[float] | None = None,
                 max_n_frac: float = 0.05, rc_aug: bool = False, mask_prob: float = 0.15, kind: int = _TRAIN):
        keep = [i for i, s in enumerate(samplers) if s]
        if not keep:
            raise InputError("no usable window in the corpus")
        self.samplers = [samplers[i] for i in keep]
        w = np.array([weights[i] for i in keep] if weights else [s.n_positions for s in self.samplers], dtype=float)
        if (w < 0).any() or w.sum() <= 0:
            raise InputError("--weights must be non-negative with a positive sum")
        self.p = w / w.sum()
        self.tok, self.seq_len, self.batch_size = tokenizer, seq_len, batch_size
        self.seed, self.rank, self.kind = seed, rank, kind
        self.max_n_frac, self.rc_aug, self.mask_prob = max_n_frac, rc_aug, mask_prob
        self.index = 0

    # resumable iterator protocol used by ntk.train.Trainer
    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        b = self.batch(self.index)
        self.index += 1
        return b

    def state_dict(self) -> dict:
        return {"index": self.index, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, d: dict) -> None:
        self.index = int(d["index"])

    # -- generation ---------------------------------------------------------------------------------
    def _window(self, rng: np.random.Generator) -> np.ndarray:
        j = int(rng.choice(len(self.samplers), p=self.p)) if len(self.samplers) > 1 else 0
        sampler = self.samplers[j]
        for _ in range(MAX_TRIES):
            chrom, start = sampler.draw(rng)
            codes = sampler.codes(chrom, start)
            if np.count_nonzero(codes == N_CODE) <= self.max_n_frac * codes.shape[0]:
                if self.rc_aug and rng.random() < 0.5:
                    codes = reverse_complement_codes(codes)
                return codes
        raise InputError(f"no usable window in {sampler.label}: {MAX_TRIES} windows in a row had more than "
                         f"{self.max_n_frac:.0%} N (raise --max-n-frac or restrict -R to sequenced regions)")

    def token_ids(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` windows tokenised and cropped to ``seq_len`` tokens: int64 [n, seq_len] (unmasked)."""
        out = np.full((n, self.seq_len), self.tok.pad_id, dtype=np.int64)
        for i in range(n):
            ids = self.tok.tokenize_codes(self._window(rng))[0][: self.seq_len]
            out[i, : ids.shape[0]] = ids
        return out

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.kind, self.rank, index])
        ids = self.token_ids(rng, self.batch_size)
        inputs, labels = bert_mask(ids, rng, self.tok.mask_id, self.tok.kmer_offset, self.tok.kmer_id_range,
                                   self.mask_prob)
        input_ids = torch.from_numpy(inputs)
        return {"input_ids": input_ids, "attention_mask": input_ids != self.tok.pad_id,
                "labels": torch.from_numpy(labels)}

    def check(self) -> None:
        """Draw one window from every corpus (errors early: before any output is written)."""
        rng = np.random.default_rng([self.seed, _PROBE])
        p = self.p
        for j in range(len(self.samplers)):
            self.p = np.eye(len(self.samplers))[j]
            self._window(rng)
        self.p = p


class Prefetcher:
    """Builds the next batches of a :class:`MaskedLMStream` in a background thread while the model trains.

    The batches and their order are those of the stream (batch ``i`` is a function of ``i``); ``state_dict`` counts
    the batches handed out, so a resume is exact. The FASTA handles are used by the worker thread only.
    """

    def __init__(self, stream: MaskedLMStream, depth: int = 2):
        self.stream, self.depth = stream, depth
        self._batches: background | None = None
        self._start()

    def _start(self) -> None:
        first, stream = self.stream.index, self.stream
        self._batches = background((stream.batch(i) for i in itertools.count(first)), self.depth, name="ntk-batches")

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()  # waits for the thread: the stream is the caller's again
            self._batches = None

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        item = next(self._batches)
        self.stream.index += 1
        return item

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, d: dict) -> None:
        self.close()
        self.stream.load_state_dict(d)
        self._start()


def validation_batches(samplers: list[WindowSampler], tokenizer: NucleotideTokenizer, seq_len: int,
                       batch_size: int, n_windows: int, seed: int, max_n_frac: float,
                       mask_prob: float = 0.15) -> list[dict[str, torch.Tensor]]:
    """A fixed validation set (same windows and masks at every evaluation, on every rank)."""
    usable = [s for s in samplers if s]
    if not usable or n_windows <= 0:
        return []
    stream = MaskedLMStream(usable, tokenizer, seq_len, batch_size, seed=seed, rank=0, max_n_frac=max_n_frac,
                            mask_prob=mask_prob, kind=_VAL)
    out = []
    for i in range(math.ceil(n_windows / batch_size)):
        stream.batch_size = min(batch_size, n_windows - i * batch_size)
        out.append(stream.batch(i))
    return out


def unigram_cross_entropy(train: MaskedLMStream, val_batches: list[dict[str, torch.Tensor]],
                          max_bases: int = 20_000_000, chunk: int = 1_000_000) -> float:
    """Loss (nats) of the best context-free predictor on the validation targets: the token frequencies of the
    training corpus (add-one smoothed), counted over every training base when the corpus holds at most
    ``max_bases``, else over random windows totalling about ``max_bases``."""
    if not val_batches:
        return float("nan")
    V = train.tok.vocab_size
    counts = np.zeros(V, dtype=np.float64)

    def add(codes: np.ndarray) -> None:
        ids = train.tok.tokenize_codes(codes, add_cls=False)[0]
        counts[:] += np.bincount(ids, minlength=V)

    total = sum(s.bases for s in train.samplers)
    if total <= max_bases:
        for s in train.samplers:
            for iv in s.intervals:
                for start in range(iv.start, iv.end, chunk):
                    add(sequence_codes(s.fasta.fetch(iv.chrom, start, min(iv.end, start + chunk))))
    else:
        rng = np.random.default_rng([train.seed, _PROBE, 1])
        for s in train.samplers:
            for _ in range(max(1, int(max_bases * s.bases / total) // s.window)):
                add(s.codes(*s.draw(rng)))
    regular = np.arange(V) >= train.tok.kmer_offset
    p = np.where(regular, counts + 1.0, 0.0)
    p /= p.sum()
    targets = torch.cat([b["labels"][b["labels"] >= 0] for b in val_batches]).numpy()
    return float(-np.log(p[targets]).mean())
