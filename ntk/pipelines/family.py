"""What the genome-scale pipelines ask of a model family: window unit and tiling, tokens per base, the centre
crop the heads predict on, which head gives per-base values, how a window is encoded.

Two families run through ``segment``/``tracks``:

- **SegmentNT** (6-mer tokens + CLS, U-Net head over tokens): windows lie inside ACGT runs (N is never fed),
  are multiples of the config's window unit (6 nt x 2**num_layers_head: 24 nt for the released heads) and are
  never padded; the whole window is predicted and ``--crop`` nt are dropped at
  each side where neighbouring windows overlap (``plan/windows.tile``).
- **NTv3** (one token per base, U-Net over bases, heads on the central ``keep_target_center_fraction`` of the
  window): window lengths are multiples of ``2**num_downsamples``; the kept centre of a window of W nt is
  ``[m, W - m)`` with ``m = W - (s + n)``, ``n = int(W * f)``, ``s = (W - n) // 2`` (the HF crop, made
  symmetric so that ``--rc-average`` averages the same positions); windows are laid so that kept centres abut
  and cover every position of a *span*, extending past the span (and past contig ends, where the window is
  filled with ``N``) by the margin. A span is an ACGT run, joined with the next one across an N gap shorter
  than one window's kept centre (so N inside a window is allowed: NTv3 has an N token and was trained with N);
  longer N gaps are skipped. Positions that are N (or IUPAC codes) in the FASTA get no value, as for
  SegmentNT. A span shorter than a full window's centre gets the shortest window whose centre covers it.
  An NTv3 model fine-tuned by ``ntk finetune segment`` has a per-base head over the whole window; ntk keeps the
  same centre of it (its config.json's ``keep_target_center_fraction``), so the tiling is the same.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NtkError
from ..io.fasta import IndexedFasta, scan_acgt_runs
from ..io.intervals import Interval
from ..model.tokenizer import N_CODE, reverse_complement_codes, sequence_codes
from ..plan.windows import Window, tile

NT_PER_TOKEN = 6


@dataclass(frozen=True)
class Job:
    """One window to run: which work unit it belongs to, the window (kept part included), and the position of
    its first kept nucleotide in the work units laid end to end (what shards and resume chunks are cut by)."""
    unit: int
    window: Window
    gpos: int = 0


def fetch_codes(fa: IndexedFasta, chrom: str, start: int, end: int) -> np.ndarray:
    """Codes of ``chrom[start:end]``; positions outside the contig are N."""
    n = fa.lengths[chrom]
    a, b = max(start, 0), min(end, n)
    codes = sequence_codes(fa.fetch(chrom, a, b)) if b > a else np.zeros(0, np.uint8)
    if a > start or b < end:
        codes = np.concatenate([np.full(a - start, N_CODE, np.uint8), codes, np.full(end - max(b, start), N_CODE,
                                                                                     np.uint8)])
    return codes


class Family:
    """Interface; see the module docstring. Window facts (unit, default window, ``--window`` checks) are the model
    config's (``cfg.window_unit``, ``cfg.default_window("segment")``, ``cfg.check_window``: model/window_rules.py)."""
    name = "?"
    fixed_crop = False

    def __init__(self, model):
        self.m = model
        self.compiled = None  # a StaticCompiled forward (--compile), set by compile()

    def compile(self, mode: str, shape: tuple[int, int], backend: str | None = None):
        """Compile the forward for batches of ``shape`` (rows, tokens); -> the StaticCompiled (run.json info)."""
        raise NtkError(f"--compile: not available for {self.name} models; run without --compile")

    @property
    def unit(self) -> int:
        return self.m.config.window_unit

    def default_window(self) -> int:
        return self.m.config.default_window("segment")

    def resolve(self, window: int | None, crop: int | None) -> tuple[int, int]:
        raise NotImplementedError

    def jobs(self, fa: IndexedFasta, units: Sequence[Interval], window: int, crop: int) -> Iterator[Job]:
        raise NotImplementedError

    def tokens(self, window_length: int) -> int:
        raise NotImplementedError

    def encode(self, fa: IndexedFasta, batch: list[Job], rc_average: bool):
        """-> (ids LongTensor [B or 2B, T], valid bool [B, W] or None: which window positions may get a value)."""
        raise NotImplementedError

    def predict(self, ids: torch.Tensor, head: str, select: torch.Tensor, n_fwd: int, rc_average: bool,
                species_id: int | None) -> tuple[torch.Tensor, int]:
        """-> (values [B, K, F_selected] float, offset of values[0] within the window)."""
        raise NotImplementedError

    def head_names(self, head: str) -> list[str]:
        raise NotImplementedError


class SegmentNTFamily(Family):
    name = "segment_nt"

    def resolve(self, window, crop):
        window = self.m.config.check_window(window, "segment")
        crop = window // 8 if crop is None else int(crop)
        if crop < 0 or 2 * crop >= window:
            raise NtkError(f"--crop {crop}: must be >= 0 and less than half the window ({window} nt)")
        return window, crop

    def jobs(self, fa, units, window, crop):
        offset = 0
        for i, u in enumerate(units):
            base, offset = offset, offset + u.length
            for s, e in scan_acgt_runs(fa, u.chrom, u.start, u.end, min_length=self.unit):
                for w in tile(s, e, window, crop, unit=self.unit, chrom=u.chrom):
                    yield Job(i, w, base + w.keep_start - u.start)

    def tokens(self, window_length):
        return window_length // NT_PER_TOKEN + 1

    def encode(self, fa, batch, rc_average):
        tok = self.m.tokenizer
        codes = np.stack([sequence_codes(fa.fetch(j.window.chrom, j.window.start, j.window.end)) for j in batch])
        if rc_average:  # reverse complements ride in the same forward pass, after the forward strands
            codes = np.concatenate([codes, np.stack([reverse_complement_codes(c) for c in codes])])
        return torch.from_numpy(np.stack([tok.tokenize_codes(c)[0] for c in codes]).astype(np.int64)), None

    def probabilities(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] ids of unpadded windows -> segment probabilities [B, 6 (T - 1), F] (what --compile compiles)."""
        m = self.m
        rescale = m.config.rescaling_for_tokens(ids.shape[1])
        return m(ids, rescaling_factor=rescale, heads="segment", unpadded=True).segment_probabilities

    def compile(self, mode, shape, backend=None):
        from ..model import compiled as compiled_module
        from ..model.compiled import StaticCompiled

        # kept on the model: a later run on the same loaded model (Python callers, benchmarks) reuses the compiled
        # forward instead of tracing again (dynamo would recompile for each new Family object, up to its limit)
        cache = self.m.__dict__.setdefault("_ntk_compiled", {})
        key = (mode, tuple(shape), backend or compiled_module.BACKEND)
        if key not in cache:
            cache[key] = StaticCompiled(self.probabilities, mode, shape, backend=backend)
        self.compiled = cache[key]
        self.compiled.reset_counts()
        return self.compiled

    def predict(self, ids, head, select, n_fwd, rc_average, species_id):
        run = self.compiled if self.compiled is not None else self.probabilities
        probs = run(ids).index_select(2, select)
        if rc_average:
            probs = (probs[:n_fwd] + probs[n_fwd:].flip(1)) * 0.5
        return probs, 0

    def head_names(self, head):
        if head != "bed":
            raise NtkError("this model has no BigWig-track head (ntk tracks needs an NTv3 post-trained model)")
        return list(self.m.config.features or [])


class NTv3Family(Family):
    name = "ntv3"
    fixed_crop = True

    def margin(self, W: int) -> int:
        s, e = self.m.crop_bounds(W)
        return max(s, W - e)

    def kept(self, W: int) -> int:
        return W - 2 * self.margin(W)

    def resolve(self, window, crop):
        if crop is not None:
            raise NtkError("--crop: NTv3 heads predict on a fixed centre of each window (keep_target_center_fraction "
                           f"{self.m.config.keep_target_center_fraction}); the crop follows from --window")
        window = self.m.config.check_window(window, "segment")
        if self.kept(window) < 1:
            raise NtkError(f"--window {window}: too short, its kept centre is empty")
        return window, self.margin(window)

    def spans(self, fa, u: Interval, gap: int) -> Iterator[tuple[int, int]]:
        cur = None
        for s, e in scan_acgt_runs(fa, u.chrom, u.start, u.end):
            if cur is not None and s - cur[1] < gap:
                cur = (cur[0], e)
                continue
            if cur is not None:
                yield cur
            cur = (s, e)
        if cur is not None:
            yield cur

    def fit_window(self, length: int, window: int) -> int:
        """The shortest window (multiple of the unit, at most ``window``) whose kept centre holds ``length``."""
        if self.kept(window) <= length:
            return window
        f = self.m.config.keep_target_center_fraction or 1.0
        W = max(self.unit, int(length / f) // self.unit * self.unit - 2 * self.unit)
        while self.kept(W) < length:
            W += self.unit
        return min(W, window)

    def jobs(self, fa, units, window, crop):
        offset = 0
        K_full = self.kept(window)
        for i, u in enumerate(units):
            base, offset = offset, offset + u.length
            for s, e in self.spans(fa, u, K_full):
                W = self.fit_window(e - s, window)
                mg, K = self.margin(W), self.kept(W)
                for a in range(s, e, K):
                    w = Window(u.chrom, a - mg, a - mg + W, a, min(a + K, e))
                    yield Job(i, w, base + w.keep_start - u.start)

    def tokens(self, window_length):
        return window_length

    def encode(self, fa, batch, rc_average):
        codes = np.stack([fetch_codes(fa, j.window.chrom, j.window.start, j.window.end) for j in batch])
        valid = torch.from_numpy(codes != N_CODE)
        if rc_average:
            codes = np.concatenate([codes, np.stack([reverse_complement_codes(c) for c in codes])])
        return torch.from_numpy(self.m.tokenizer.tokenize_codes(codes.reshape(-1))[0].reshape(codes.shape)), valid

    def predict(self, ids, head, select, n_fwd, rc_average, species_id):
        m = self.m
        W = ids.shape[1]
        mg, K = self.margin(W), self.kept(W)
        if head == "bed" and m.segment_head is not None:  # `ntk finetune segment` head: the whole window
            vals = m(ids, species_ids=species_id, heads="segment").segment_probabilities.index_select(2, select)
            fwd = vals[:n_fwd, mg: mg + K]
            if rc_average:
                fwd = (fwd + vals[n_fwd:].flip(1)[:, mg: mg + K]) * 0.5
            return fwd, mg
        s, e = m.crop_bounds(W)
        out = m(ids, species_ids=species_id)
        vals = out.bed_probabilities if head == "bed" else out.bigwig_tracks_logits.float()
        vals = vals.index_select(2, select)
        fwd = vals[:n_fwd, mg - s: mg - s + K]
        if rc_average:  # the reverse strand's crop covers forward positions [W - e, W - s)
            rc = vals[n_fwd:].flip(1)
            lo = mg - (W - e)
            fwd = (fwd + rc[:, lo: lo + K]) * 0.5
        return fwd, mg

    def head_names(self, head):
        cfg = self.m.config
        if head == "bed" and cfg.segment_features:
            return list(cfg.segment_features)
        if not cfg.is_post_trained:
            raise NtkError("this NTv3 model is pre-trained only (MLM head): ntk segment and ntk tracks need a "
                           "post-trained NTv3 model (BED-element and BigWig-track heads) or, for ntk segment, one "
                           "fine-tuned by ntk finetune segment")
        if head == "bed":
            if not cfg.bed_elements_names:
                raise NtkError("this NTv3 model has no BED-element head")
            return list(cfg.bed_elements_names)
        return []  # BigWig tracks depend on the species: see tracks_for


def ntv3_species_id(model, species: str | None) -> int | None:
    """The species id for a post-trained NTv3 model (NtkError listing the choices); None for pre-trained."""
    if not model.config.is_post_trained:
        if species is not None:
            raise NtkError("--species: this NTv3 model is pre-trained (not conditioned on a species)")
        return None
    if species is None or species not in model.species:
        what = "--species is required for this NTv3 post-trained model" if species is None else \
            f"--species {species!r}: not a species of this model"
        raise NtkError(f"{what}; choose one of: {', '.join(model.species)}")
    return model.species_id(species)


def family_of(model) -> Family:
    from ..model.ntv3 import NTv3

    return NTv3Family(model) if isinstance(model, NTv3) else SegmentNTFamily(model)
