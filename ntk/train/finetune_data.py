"""Data for ``ntk finetune``: label encoding, leak-free splits, and resumable batch streams.

Sequence tasks (classify/regress): labels are encoded once (:func:`encode_labels`), sequences tokenized once,
and :class:`SequenceBatches` yields shuffled padded batches epoch after epoch (its position is saved in every
checkpoint, so ``--resume`` continues with the same batches).

Segmentation: :func:`genome_windows` lists full-length windows (a multiple of 24 nt, never padded, never
containing N) inside the ACGT runs of the chosen contigs, as numpy arrays (16 bytes a window: a whole genome
fits); :class:`WindowBatches` fetches each batch's sequence from the indexed FASTA and paints its targets from
the annotation on the fly, so memory does not grow with the genome.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..io.annotation import Annotation
from ..io.fasta import IndexedFasta, scan_acgt_runs
from ..model.window_rules import SEGMENT_NT_UNIT
from ..io.labels import LabeledSequences
from ..plan.windows import tile

PROBLEM_TYPES = {"single": "single_label_classification", "multi": "multi_label_classification",
                 "regression": "regression"}


# -- labels ----------------------------------------------------------------------------------------
@dataclass
class EncodedLabels:
    problem_type: str  # single_label_classification | multi_label_classification | regression
    names: list[str]  # classes, labels or targets
    y: np.ndarray  # int64 [N] | float32 multi-hot [N, K] | float32 [N, K]

    @property
    def num_outputs(self) -> int:
        return len(self.names)

    def strata(self) -> np.ndarray | None:
        """A class per example for stratified splitting (regression: quintiles of the first target)."""
        if self.problem_type == "single_label_classification":
            return self.y
        if self.problem_type == "regression":
            v = self.y[:, 0]
            return np.searchsorted(np.quantile(v, [0.2, 0.4, 0.6, 0.8]), v, side="right")
        return None


def _sort_classes(values: list[str]) -> list[str]:
    try:
        return sorted(values, key=lambda v: float(v))
    except ValueError:
        return sorted(values)


def _label_str(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def encode_labels(data: LabeledSequences, label_cols: list[str], task: str, multi_label: bool = False,
                  classes: list[str] | None = None) -> EncodedLabels:
    """Turn raw label values into training targets; every missing or unknown value is an error naming its record."""
    src = data.source

    def missing(col, i):
        return InputError(f"{src}: {data.where[i]}: missing label in column {col!r}")

    if task == "regress":
        y = np.zeros((len(data), len(label_cols)), dtype=np.float32)
        for j, c in enumerate(label_cols):
            for i, v in enumerate(data.labels[c]):
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    raise missing(c, i)
                try:
                    y[i, j] = float(v)
                except (TypeError, ValueError):
                    raise InputError(f"{src}: {data.where[i]}: {c} = {v!r} is not a number (regression targets "
                                     "must be numeric)") from None
        if not np.isfinite(y).all():
            i = int(np.flatnonzero(~np.isfinite(y).all(1))[0])
            raise InputError(f"{src}: {data.where[i]}: regression target is not finite")
        return EncodedLabels("regression", list(label_cols), y)
    if task != "classify":
        raise ValueError(f"unknown task {task!r}")
    if multi_label:
        if len(label_cols) > 1:  # one 0/1 column per label
            y = np.zeros((len(data), len(label_cols)), dtype=np.float32)
            for j, c in enumerate(label_cols):
                for i, v in enumerate(data.labels[c]):
                    if v is None:
                        raise missing(c, i)
                    s = _label_str(v).lower()
                    if s not in ("0", "1", "true", "false"):
                        raise InputError(f"{src}: {data.where[i]}: {c} = {v!r}: multi-label columns hold 0/1")
                    y[i, j] = s in ("1", "true")
            return EncodedLabels(PROBLEM_TYPES["multi"], list(label_cols), y)
        col = label_cols[0]  # one column of label names joined by ';' ',' or '|'
        sets = [{t for t in re.split(r"[;,|]", _label_str(v)) if t} if v is not None else set()
                for v in data.labels[col]]
        names = list(classes) if classes else _sort_classes(sorted(set().union(*sets)))
        pos = {n: k for k, n in enumerate(names)}
        y = np.zeros((len(data), len(names)), dtype=np.float32)
        for i, s in enumerate(sets):
            for t in s:
                if t not in pos:
                    raise InputError(f"{src}: {data.where[i]}: unknown label {t!r} (known: {', '.join(names[:10])})")
                y[i, pos[t]] = 1.0
        if len(names) < 1:
            raise InputError(f"{src}: no labels found in column {col!r}")
        return EncodedLabels(PROBLEM_TYPES["multi"], names, y)
    if len(label_cols) != 1:
        raise InputError("single-label classification takes one --label-col (use --multi-label for several)")
    col = label_cols[0]
    vals = []
    for i, v in enumerate(data.labels[col]):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise missing(col, i)
        vals.append(_label_str(v))
    names = list(classes) if classes else _sort_classes(sorted(set(vals)))
    pos = {n: k for k, n in enumerate(names)}
    y = np.empty(len(vals), dtype=np.int64)
    for i, v in enumerate(vals):
        if v not in pos:
            raise InputError(f"{src}: {data.where[i]}: unknown class {v!r} (--classes: {', '.join(names)})")
        y[i] = pos[v]
    if len(names) < 2:
        raise InputError(f"{src}: column {col!r} holds a single class ({names[0]!r}): nothing to classify")
    return EncodedLabels(PROBLEM_TYPES["single"], names, y)


# -- splits ----------------------------------------------------------------------------------------
@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    how: str

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _take_fractions(idx: np.ndarray, fracs: list[float], rng) -> list[np.ndarray]:
    idx = idx[rng.permutation(len(idx))]
    out, start = [], 0
    for f in fracs:
        k = int(round(f * len(idx)))
        out.append(idx[start:start + k])
        start += k
    out.append(idx[start:])
    return out


def split_random(n: int, strata: np.ndarray | None, val_fraction: float, test_fraction: float,
                 seed: int) -> Split:
    """Random split, stratified by ``strata`` (class, or quantile bin) when given."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InputError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    parts = [_take_fractions(g, [val_fraction, test_fraction], rng) for g in groups]
    val = np.sort(np.concatenate([p[0] for p in parts]))
    test = np.sort(np.concatenate([p[1] for p in parts]))
    train = np.sort(np.concatenate([p[2] for p in parts]))
    return Split(train, val, test, "stratified random" if strata is not None else "random")


def split_kfold(n: int, strata: np.ndarray | None, k: int, val_fraction: float, seed: int) -> list[Split]:
    """K folds (stratified): fold i tests on part i, validates on a stratified ``val_fraction`` of the rest."""
    if k < 2:
        raise InputError("--folds must be >= 2")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(n, dtype=np.int64)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    offset = 0
    for g in groups:  # deal each stratum round-robin over folds, continuing where the last one stopped
        g = g[rng.permutation(len(g))]
        fold_of[g] = (np.arange(len(g)) + offset) % k
        offset += len(g)
    folds = []
    for i in range(k):
        test = np.flatnonzero(fold_of == i)
        rest = np.flatnonzero(fold_of != i)
        sub = split_random(len(rest), strata[rest] if strata is not None else None, val_fraction, 0.0, seed + i)
        folds.append(Split(np.sort(rest[sub.train]), np.sort(rest[sub.val]), test, f"fold {i + 1}/{k}"))
    return folds


def split_by_chroms(chroms: list[str], val_chroms: list[str], test_chroms: list[str]) -> Split:
    """Whole chromosomes held out: no sequence of a validation/test chromosome is ever trained on."""
    c = np.asarray(chroms)
    present = set(chroms)
    for name in list(val_chroms) + list(test_chroms):
        if name not in present:
            raise InputError(f"--val-chroms/--test-chroms: no input record on {name!r} "
                             f"(chromosomes: {', '.join(sorted(present)[:10])})")
    if set(val_chroms) & set(test_chroms):
        raise InputError("a chromosome cannot be both in --val-chroms and --test-chroms")
    val = np.flatnonzero(np.isin(c, list(val_chroms)))
    test = np.flatnonzero(np.isin(c, list(test_chroms)))
    train = np.flatnonzero(~np.isin(c, list(val_chroms) + list(test_chroms)))
    if len(train) == 0:
        raise InputError("every record is on a validation/test chromosome: nothing left to train on")
    return Split(train, val, test, "by chromosome")


def split_by_column(values: list, where: list[str], source: str) -> Split:
    """A ``split`` column with train / val (valid, validation, dev) / test per record."""
    names = {"train": 0, "training": 0, "val": 1, "valid": 1, "validation": 1, "dev": 1, "test": 2}
    code = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        k = names.get(str(v).strip().lower()) if v is not None else None
        if k is None:
            raise InputError(f"{source}: {where[i]}: split {v!r} is not train, val or test")
        code[i] = k
    return Split(np.flatnonzero(code == 0), np.flatnonzero(code == 1), np.flatnonzero(code == 2), "split column")


# -- sequence batches ------------------------------------------------------------------------------
def tokenize_all(tokenizer, sequences: list[str], max_tokens: int, where: list[str], source: str) -> list[np.ndarray]:
    out = []
    for s, w in zip(sequences, where):
        ids = tokenizer.tokenize(s)[0]
        if len(ids) > max_tokens:
            raise InputError(f"{source}: {w}: {len(s)} nt needs {len(ids)} tokens but the model takes at most "
                             f"{max_tokens} (about {(max_tokens - 1) * 6} nt); shorten the sequences")
        out.append(ids)
    return out


def collate(ids: list[np.ndarray], y: np.ndarray | None, pad_id: int, unit: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad with ``pad_id`` to the longest sequence, rounded up to a multiple of ``unit`` (NTv3: 2^num_downsamples,
    padded with N); ``attention_mask`` marks each sequence's own tokens (so an N inside an NTv3 sequence counts)."""
    T = max(len(t) for t in ids)
    T = -(-T // unit) * unit
    arr = np.full((len(ids), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), T), dtype=bool)
    for i, t in enumerate(ids):
        arr[i, : len(t)] = t
        mask[i, : len(t)] = True
    input_ids = torch.from_numpy(arr)
    batch = {"input_ids": input_ids, "attention_mask": torch.from_numpy(mask)}
    if y is not None:
        batch["labels"] = torch.from_numpy(np.ascontiguousarray(y))
    return batch


class SequenceBatches:
    """Endless shuffled batches over the training examples, one permutation per epoch (seeded); resumable.

    ``shift_augment`` (with ``sequences`` and ``tokenizer``): each time a sequence is drawn, 0..shift_augment of
    its leading nucleotides are dropped (uniformly, seeded by epoch and batch) before it is tokenised, so the model
    sees every 6-mer tokenisation frame of it. With 6-mer tokens a motif is a different token (or split over two)
    in each frame: without this, a small data set is learned by heart in one frame instead of by its content.
    """

    def __init__(self, ids: list[np.ndarray], y: np.ndarray, batch_size: int, pad_id: int, seed: int = 0,
                 sequences: list[str] | None = None, tokenizer=None, shift_augment: int = 0,
                 max_tokens: int | None = None, unit: int = 1):
        self.ids, self.y, self.batch_size, self.pad_id, self.seed = ids, y, batch_size, pad_id, seed
        self.unit = unit
        self.sequences, self.tokenizer, self.shift_augment = sequences, tokenizer, shift_augment
        self.max_tokens = max_tokens
        if shift_augment and (sequences is None or tokenizer is None):
            raise ValueError("shift_augment needs the sequences and the tokenizer")
        self.epoch, self.batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.ids) / self.batch_size)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.batch = int(d["epoch"]), int(d["batch"])

    def _ids(self, sel: np.ndarray) -> list[np.ndarray]:
        if not self.shift_augment:
            return [self.ids[i] for i in sel]
        rng = np.random.default_rng([self.seed, self.epoch, self.batch, 1])
        shifts = rng.integers(0, self.shift_augment + 1, size=len(sel))
        out = []
        for i, k in zip(sel, shifts):
            s = self.sequences[i]
            k = int(min(k, max(len(s) - 6, 0)))  # keep at least one 6-mer
            t = self.tokenizer.tokenize(s[k:])[0] if k else self.ids[i]
            out.append(self.ids[i] if self.max_tokens and len(t) > self.max_tokens else t)
        return out

    def __iter__(self):
        while True:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.ids))
            while self.batch < self.batches_per_epoch:
                sel = perm[self.batch * self.batch_size:(self.batch + 1) * self.batch_size]
                ids = self._ids(sel)
                self.batch += 1
                yield collate(ids, self.y[sel], self.pad_id, self.unit)
            self.epoch, self.batch = self.epoch + 1, 0


def eval_batches(ids: list[np.ndarray], y: np.ndarray | None, batch_size: int, pad_id: int, unit: int = 1):
    """Batches in input order (length-sorted within a look-ahead of 64 batches to limit padding; with ``unit`` > 1
    only records of the same padded length share a batch); yields ``(positions, batch)``."""
    n = len(ids)
    chunk = batch_size * 64
    for c0 in range(0, n, chunk):
        pos = np.arange(c0, min(c0 + chunk, n))
        pos = pos[np.argsort([len(ids[i]) for i in pos], kind="stable")]
        if unit == 1:
            groups = [pos]
        else:  # NTv3: N padding is seen by the U-Net, so batch only records of the same padded length: each
            #   record's output is then that of the record alone, whatever else is in the input
            padded = np.array([-(-len(ids[i]) // unit) * unit for i in pos])
            cuts = np.flatnonzero(np.diff(padded)) + 1
            groups = np.split(pos, cuts)
        for g in groups:
            for b0 in range(0, len(g), batch_size):
                sel = g[b0:b0 + batch_size]
                yield sel, collate([ids[i] for i in sel], y[sel] if y is not None else None, pad_id, unit)


# -- segmentation windows --------------------------------------------------------------------------
NT_UNIT = SEGMENT_NT_UNIT  # the released SegmentNT heads' window unit (callers pass the model config's window_unit)


@dataclass
class GenomeWindows:
    """Full-length windows as arrays: contig index, window start, kept part, and the enclosing ACGT run."""
    contigs: list[str]
    window: int
    contig: np.ndarray
    start: np.ndarray
    keep_start: np.ndarray
    keep_end: np.ndarray
    run_start: np.ndarray
    run_end: np.ndarray
    skipped_bp: int  # ACGT nucleotides in runs shorter than a window (not covered)

    def __len__(self) -> int:
        return len(self.start)

    def subsample(self, n: int | None) -> GenomeWindows:
        """At most ``n`` windows, evenly spaced along the genome (deterministic)."""
        if n is None or len(self) <= n:
            return self
        idx = np.unique(np.linspace(0, len(self) - 1, n).round().astype(np.int64))
        return GenomeWindows(self.contigs, self.window, *(a[idx] for a in (
            self.contig, self.start, self.keep_start, self.keep_end, self.run_start, self.run_end)),
            skipped_bp=self.skipped_bp)


def genome_windows(fa: IndexedFasta, contigs: list[str], window: int, crop: int = 0, unit: int = NT_UNIT
                   ) -> GenomeWindows:
    """Windows of exactly ``window`` nt tiling every ACGT run of at least ``window`` nt (see plan.windows);
    ``unit``: what window lengths must be a multiple of (SegmentNT 24, NTv3 2^num_downsamples)."""
    if window % unit:  # callers check --window with the model config (cfg.check_window) first
        raise ValueError(f"window {window} is not a multiple of the window unit {unit}")
    cols: list[list[int]] = [[] for _ in range(6)]
    skipped = 0
    for ci, name in enumerate(contigs):
        for s, e in scan_acgt_runs(fa, name):
            if e - s < window:
                skipped += e - s
                continue
            for w in tile(s, e, window, crop, unit, name):
                for col, v in zip(cols, (ci, w.start, w.keep_start, w.keep_end, s, e)):
                    col.append(v)
    arrs = [np.asarray(c, dtype=np.int64) for c in cols]
    return GenomeWindows(list(contigs), window, *arrs, skipped_bp=skipped)


class WindowBatches:
    """Segmentation batches: (shuffled, jittered, optionally reverse-complemented) windows -> token ids and
    per-nucleotide targets ``[B, window, F]``. Endless when ``train``, one pass otherwise; resumable."""

    def __init__(self, fa: IndexedFasta, annotation: Annotation, windows: GenomeWindows, tokenizer, batch_size: int,
                 train: bool = True, seed: int = 0, jitter: bool = True, rc_augment: bool = False):
        self.fa, self.ann, self.w, self.tok = fa, annotation, windows, tokenizer
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.jitter, self.rc_augment = jitter, rc_augment
        self.epoch, self.batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.w) / self.batch_size)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.batch = int(d["epoch"]), int(d["batch"])

    def make_batch(self, sel: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        W = self.w.window
        starts = self.w.start[sel].copy()
        flips = np.zeros(len(sel), dtype=bool)
        if rng is not None:
            if self.jitter:  # shift each window by up to half its length, staying inside its ACGT run
                shift = rng.integers(-W // 2, W // 2 + 1, size=len(sel))
                starts = np.clip(starts + shift, self.w.run_start[sel], self.w.run_end[sel] - W)
            if self.rc_augment:
                flips = rng.random(len(sel)) < 0.5
        ids, targets = [], []
        for k, i in enumerate(sel):
            chrom = self.w.contigs[self.w.contig[i]]
            s = int(starts[k])
            seq = self.fa.fetch(chrom, s, s + W)
            t = self.ann.targets(chrom, s, s + W)
            if flips[k]:
                seq = seq.translate(_COMPLEMENT)[::-1]
                t = t[::-1]
            ids.append(self.tok.tokenize(seq)[0])
            targets.append(t)
        return {"input_ids": torch.from_numpy(np.stack(ids).astype(np.int64)),
                "targets": torch.from_numpy(np.ascontiguousarray(np.stack(targets)))}

    def __iter__(self):
        if not self.train:
            for b in range(self.batches_per_epoch):
                sel = np.arange(b * self.batch_size, min((b + 1) * self.batch_size, len(self.w)))
                yield sel, self.make_batch(sel)
            return
        while True:
            rng = np.random.default_rng([self.seed, self.epoch])
            perm = rng.permutation(len(self.w))
            while self.batch < self.batches_per_epoch:
                sel = perm[self.batch * self.batch_size:(self.batch + 1) * self.batch_size]
                brng = np.random.default_rng([self.seed, self.epoch, self.batch])
                self.batch += 1
                yield self.make_batch(sel, brng)
            self.epoch, self.batch = self.epoch + 1, 0


_COMPLEMENT = str.maketrans("ACGT", "TGCA")
