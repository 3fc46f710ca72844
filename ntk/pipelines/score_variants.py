"""Zero-shot variant effect scores from a VCF (``ntk score-variants``).

Scores, per ALT allele (a multi-allelic record is split; every score is a ``Number=A`` INFO field):

- ``cosine`` (``NTK_COS``): cosine *distance* ``1 - cos(r, a)`` between the mean embeddings ``r`` (reference
  window) and ``a`` (alternate window); 0 = no change. ``l2`` / ``l1`` (``NTK_L2``, ``NTK_L1``): Euclidean and
  Manhattan distances; ``dot`` (``NTK_DOT``): the dot product ``r . a`` (a similarity, not a distance).
  Mean embedding = final-layer hidden states (after the last LayerNorm) averaged over the window's tokens,
  ``<cls>`` and padding excluded, every token weighted equally.
- ``llr`` (``NTK_LLR``): the reference window with the token covering the variant replaced by ``<mask>``;
  ``log p(alt token) - log p(ref token)`` from the LM head at that position. Only substitutions (SNVs, MNVs)
  whose changed bases all fall inside one token; for other alleles this score is missing.
- ``segment`` (``NTK_SEG_<feature>``, SegmentNT-type models): per feature, the largest
  ``|p_alt - p_ref|`` over reference positions within ``segment_radius`` nt of the REF span, positions aligned
  through the edit (inserted and deleted bases are not compared).

Windows. Reference windows are a fixed tiling of each contig (of each ACGT run for SegmentNT-type models,
whose windows must be N-free multiples of 24 nt): :func:`ntk.plan.windows.tile` with the window ``W``
and ``crop = W // 4``, so windows start every ``W/2`` nt and each owns the middle half of itself. A variant's
reference window is the one whose kept part contains its first REF base: the variant lies at least ``W/4`` nt
from either window edge (except within ``W/4`` of a contig end, where the window is shifted to end there),
not exactly at the centre as in a window drawn around each variant. This is what lets variants share one
reference forward pass per window; a score therefore depends on the genome, ``W`` and the model only, never on
the other variants in the file.

Alternate window: the reference window with REF replaced by ALT, brought back to length ``W`` around the edit:
an insertion of ``d`` extra nt drops ``d // 2`` nt from the left end and the rest from the right end; a
deletion of ``d`` nt extends the window by ``d // 2`` reference nt on the left and the rest on the right (taking
from the other side at a contig/run end). Edits longer than ``W / 4`` nt are ``unsupported``.

Statuses (``NTK_STATUS``): ``ok`` (at least one score), ``ref_mismatch`` (REF differs from the FASTA or lies
outside the contig, e.g. POS 0; nothing scored), ``symbolic`` (``<DEL>``, breakends), ``unsupported`` (``*``
allele, non-nucleotide ALT, edit longer than ``W/4``, or no requested score applies, e.g. ``llr`` alone on an
indel), ``no_context`` (contig shorter than one token; for SegmentNT-type models also no N-free window of full
length around the variant).

Streaming: records are read in chunks; each chunk is sorted by position so that variants in the same window
share its reference pass (a small cache carries windows across chunks); alternate and masked sequences are
batched by token budget; records are written back in input order. On the engine (``pipelines/engine.py``): chunks
are read in a reader thread, scored in the main thread and written in a writer thread; shards, the ``--resume``
journal and part manifests are the engine's; the command is :func:`run_score` over one
:class:`~ntk.pipelines.options.ScoreOptions`.
"""
from __future__ import annotations

import bisect
import json
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import polars as pl
import torch

from .. import __version__
from ..errors import InputError, NtkError
from ..io.atomic import check_writable_target, refuse_inputs_as_outputs
from ..io.fasta import IndexedFasta, normalise_sequence, scan_acgt_runs
from ..io.intervals import Interval, check_contig_naming, load_regions, merge_overlapping, read_chr_map, suggest_contig
from ..io.tables import ParquetStreamWriter
from ..io.vcf import STAR, SYMBOLIC, InfoField, VcfReader, VcfWriter, split_alts
from ..model.checkpoint import zero_shot_not_informative
from ..model.nt import segment_probabilities
from ..model.tokenizer import reverse_complement
from ..report import Reporter, default_reporter
from ..plan.batching import auto_token_budget, by_token_budget
from .engine import open_journal, open_model, overlap, shard_block, write_part_manifest
from .options import ScoreOptions
from .shards import manifest_path
from ..plan.windows import Window, tile

EMBEDDING_SCORES = ("cosine", "l2", "l1", "dot")
ALL_SCORES = EMBEDDING_SCORES + ("llr", "segment")
INFO_IDS = {"cosine": "NTK_COS", "l2": "NTK_L2", "l1": "NTK_L1", "dot": "NTK_DOT", "llr": "NTK_LLR"}
STATUSES = ("ok", "ref_mismatch", "symbolic", "no_context", "unsupported")
STATUS_INFO = "NTK_STATUS"
NUC_PER_TOKEN = 6
DEFAULT_SEGMENT_RADIUS = 500


# -- options --------------------------------------------------------------------------------------------------

def default_scores(model) -> list[str]:
    """Embedding distances, plus ``llr`` with an LM head, plus ``segment`` for SegmentNT-type models."""
    out = list(EMBEDDING_SCORES)
    if model.lm_head is not None:
        out.append("llr")
    if model.config.is_segmentation:
        out.append("segment")
    return out


def parse_scores(scores: str | Sequence[str] | None, model) -> list[str]:
    if scores is None or scores == "" or scores == "default":
        return default_scores(model)
    names = [s.strip().lower() for s in (scores.split(",") if isinstance(scores, str) else scores) if s.strip()]
    for s in names:
        if s not in ALL_SCORES:
            raise NtkError(f"--scores: unknown score {s!r} (choose from {', '.join(ALL_SCORES)})")
    if "llr" in names and model.lm_head is None:
        raise NtkError("--scores llr needs a model with a masked-LM head (this checkpoint has none)")
    if "segment" in names and not model.config.is_segmentation:
        raise NtkError("--scores segment needs a SegmentNT-type model (this checkpoint has no segmentation head)")
    return list(dict.fromkeys(names))


# -- where each variant's windows lie ---------------------------------------------------------------------------

class WindowPlan:
    """The fixed tiling of reference windows (see module docstring) and sequence access around it."""

    def __init__(self, fasta: IndexedFasta, window: int, segmentation: bool, unit: int = 1):
        self.fasta = fasta
        self.window = window
        self.crop = window // 4
        self.segmentation = segmentation
        self.unit = unit
        self._tiles: OrderedDict = OrderedDict()
        self._runs: OrderedDict = OrderedDict()

    def _lru(self, cache: OrderedDict, key, make, size: int):
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        val = cache[key] = make()
        if len(cache) > size:
            cache.popitem(last=False)
        return val

    def runs(self, chrom: str) -> list[tuple[int, int]]:
        """ACGT runs of a contig, scanned in 4 Mb pieces (memory flat in the contig length)."""
        return self._lru(self._runs, chrom, lambda: list(scan_acgt_runs(self.fasta, chrom)), 8)

    def _tiling(self, chrom: str, lo: int, hi: int) -> tuple[list[Window], list[int]]:
        def make():
            ws = tile(lo, hi, self.window, self.crop, self.unit, chrom)
            return ws, [w.keep_start for w in ws]
        return self._lru(self._tiles, (chrom, lo, hi), make, 64)

    def locate(self, chrom: str, start: int, end: int) -> tuple[Window, int, int] | None:
        """(window, lo, hi) for a REF span ``[start, end)``: the window whose kept part holds ``start``, and the
        bounds ``[lo, hi)`` that alternate windows may extend into (contig, or ACGT run for SegmentNT)."""
        if self.segmentation:
            runs = self.runs(chrom)
            i = bisect.bisect_right(runs, (start, float("inf"))) - 1
            if i < 0 or not (runs[i][0] <= start and max(end, start + 1) <= runs[i][1]):
                return None
            lo, hi = runs[i]
        else:
            lo, hi = 0, self.fasta.lengths[chrom]
        ws, keeps = self._tiling(chrom, lo, hi)
        j = bisect.bisect_right(keeps, start) - 1
        if j < 0:
            return None
        w = ws[j]
        if not (w.start <= start and end <= w.end):
            return None
        return w, lo, hi


def alternate_window(seq: str, seq_start: int, w_start: int, w_end: int, pos: int, ref_len: int, alt: str
                     ) -> tuple[str, int]:
    """The alternate window and the reference coordinate of its first base (see module docstring).

    ``seq`` is reference sequence starting at ``seq_start`` that covers ``[w_start, w_end)`` plus whatever flank
    may be used for deletions. The result has length ``w_end - w_start`` unless the flanks ran out."""
    d = len(alt) - ref_len
    left_avail = w_start - seq_start
    right_avail = seq_start + len(seq) - w_end
    a, b = pos - seq_start, pos + ref_len - seq_start
    if d >= 0:
        left_room, right_room = pos - w_start, w_end - (pos + ref_len)
        tl = min(d // 2, left_room)
        tr = d - tl
        if tr > right_room:
            tr = right_room
            tl = d - tr
        start = w_start + tl
        return seq[start - seq_start:a] + alt + seq[b:w_end - tr - seq_start], start
    e = -d
    el = min(e // 2, left_avail)
    er = min(e - el, right_avail)
    el = min(e - er, left_avail)
    start = w_start - el
    return seq[start - seq_start:a] + alt + seq[b:w_end + er - seq_start], start


# -- model passes ----------------------------------------------------------------------------------------------

@dataclass
class _Pass:
    ids: np.ndarray  # token ids incl. <cls>
    reverse: bool = False  # sequence is the reverse complement of the window
    want_embedding: bool = False
    probs_range: tuple[int, int] | None = None  # forward-strand nucleotide range of segment probabilities to keep
    mask_pos: int | None = None  # token index replaced by <mask>: keep log-probabilities there
    embedding: np.ndarray | None = None
    probs: np.ndarray | None = None
    logp: np.ndarray | None = None


class PassRunner:
    """Run forward passes batched by token budget; keep only what each pass asks for."""

    def __init__(self, model, token_budget: int | None = None, max_batch: int | None = None):
        self.model = model
        cfg = model.config
        self.token_budget = token_budget or auto_token_budget(model.device.type, cfg.hidden_size,
                                                              cfg.num_hidden_layers)
        self.max_batch = max_batch
        self.segmentation = cfg.is_segmentation
        self.pad_id = cfg.pad_token_id
        self.counts = Counter()
        self.compiled = None  # --compile: the unpadded trunk, for one static shape (ntk/model/compiled.py)

    def compile(self, mode: str) -> None:
        """Compile the trunk's unpadded forward (--compile); padded batches stay eager."""
        from ..model.compiled import StaticCompiled

        self.compiled = StaticCompiled(self._trunk, mode, rows_for=lambda T: self.max_batch or
                                       max(1, self.token_budget // T))

    def _trunk(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden state [B, T, H]; ``mask`` None: nothing padded."""
        return self.model(input_ids, attention_mask=mask, heads=False, unpadded=mask is None).last_hidden_state

    def run(self, passes: list[_Pass], kind: str = "") -> None:
        order = sorted(passes, key=lambda p: len(p.ids))
        if self.max_batch:
            budget = self.max_batch * max((len(p.ids) for p in order), default=1)
        else:
            budget = self.token_budget
        groups: Iterable[list[_Pass]] = [order]
        if self.segmentation:  # SegmentNT windows are never padded: batch equal lengths only
            groups = [[p for p in order if len(p.ids) == n] for n in sorted({len(p.ids) for p in order})]
        for g in groups:
            for batch in by_token_budget(g, lambda p: len(p.ids), budget, self.max_batch):
                self._run_batch(batch)

    @torch.inference_mode()
    def _run_batch(self, batch: list[_Pass]) -> None:
        m = self.model
        T = max(len(p.ids) for p in batch)
        ids = np.full((len(batch), T), self.pad_id, dtype=np.int64)
        for i, p in enumerate(batch):
            ids[i, :len(p.ids)] = p.ids
        input_ids = torch.from_numpy(ids).to(m.device)
        mask = input_ids != self.pad_id
        if self.compiled is None:
            x = self._trunk(input_ids, mask)
        elif (ids == self.pad_id).any():
            x = self.compiled.eager(self._trunk, input_ids, mask)
        else:
            x = self.compiled(input_ids)
        self.counts["passes"] += len(batch)
        self.counts["batches"] += 1
        emb_rows = [i for i, p in enumerate(batch) if p.want_embedding]
        if emb_rows:
            xs, ms = x[emb_rows, 1:].float(), mask[emb_rows, 1:].unsqueeze(-1).float()
            means = ((xs * ms).sum(1) / ms.sum(1)).cpu().numpy()
            for k, i in enumerate(emb_rows):
                batch[i].embedding = means[k]
        seg_rows = [i for i, p in enumerate(batch) if p.probs_range is not None]
        if seg_rows:
            logits = m.segment_head(x[seg_rows], input_ids[seg_rows])
            probs = segment_probabilities(logits).cpu().numpy()  # [b, W, F]
            for k, i in enumerate(seg_rows):
                p = batch[i]
                pr = probs[k][::-1] if p.reverse else probs[k]
                a, b = p.probs_range
                p.probs = np.ascontiguousarray(pr[a:b])
        lm_rows = [i for i, p in enumerate(batch) if p.mask_pos is not None]
        if lm_rows:
            cols = torch.tensor([batch[i].mask_pos for i in lm_rows], device=x.device)
            logits = m.lm_head(x[torch.tensor(lm_rows, device=x.device), cols]).float()
            logp = torch.log_softmax(logits, dim=-1).cpu().numpy()
            for k, i in enumerate(lm_rows):
                batch[i].logp = logp[k]


# -- one (record, ALT) ----------------------------------------------------------------------------------------

@dataclass
class _Job:
    rec: int  # index of the record in its chunk
    alt_index: int
    chrom: str  # FASTA contig name
    pos: int  # 0-based first REF base
    ref: str
    alt: str
    status: str | None = None  # None: to be scored
    window: Window | None = None
    lo: int = 0
    hi: int = 0
    values: dict[str, float] = field(default_factory=dict)
    # per-strand partial results
    alt_passes: list[_Pass] = field(default_factory=list)
    llr_parts: list[tuple[_Pass, int, int]] = field(default_factory=list)  # (masked pass, ref id, alt id)
    alt_start: int = 0
    alt_len: int = 0


@dataclass
class _RefWindow:
    window: Window
    seq: str  # reference sequence from seq_start, covering the window plus flanks for deletions
    seq_start: int
    tokens: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per strand (forward, reverse)
    passes: list[_Pass] = field(default_factory=list)  # per strand, when embeddings/segment are scored
    probs: np.ndarray | None = None  # [W, F] strand-averaged segment probabilities

    def window_seq(self) -> str:
        w = self.window
        return self.seq[w.start - self.seq_start:w.end - self.seq_start]


@dataclass
class ScoreSummary:
    records: int = 0
    alleles: int = 0
    status: Counter = field(default_factory=Counter)
    passes: Counter = field(default_factory=Counter)  # ref / alt / masked forward passes
    seconds: float = 0.0
    indexed: bool = True
    scores: list[str] = field(default_factory=list)
    window: int = 0
    resume: dict | None = None  # chunks reused / computed with --resume
    compile: dict | None = None  # --compile: mode, static shape, batches compiled / eager

    @property
    def variants_per_second(self) -> float:
        return self.alleles / self.seconds if self.seconds else 0.0


def llr_changed_bases(j: _Job) -> list[int]:
    """Offsets in REF of the bases an ``llr`` score masks: [] when the variant gets none (not a same-length
    change to ACGT bases) or needs none (REF == ALT: ``llr`` is set to 0 here)."""
    if len(j.ref) != len(j.alt) or any(c not in "ACGT" for c in j.alt):
        return []
    diff = [i for i in range(len(j.ref)) if j.ref[i] != j.alt[i]]
    if not diff:
        j.values["llr"] = 0.0
    return diff


class VariantScorer:
    """Scores (record, ALT) jobs for one model, reference and option set; reusable across chunks."""

    def __init__(self, model, fasta: IndexedFasta, scores: Sequence[str], window: int, rc_average: bool = False,
                 segment_radius: int = DEFAULT_SEGMENT_RADIUS, token_budget: int | None = None,
                 max_batch: int | None = None, group_jobs: int = 256, group_windows: int = 16):
        self.model = model
        self.fasta = fasta
        self.on_scored: Callable[[int], None] | None = None  # progress: called with the jobs of each scored group
        self.scores = list(scores)
        self.window = window
        self.rc_average = rc_average
        self.segment_radius = int(segment_radius)
        self.plan = WindowPlan(fasta, window, model.config.is_segmentation, model.config.window_unit)
        self.runner = PassRunner(model, token_budget, max_batch)
        self.tokenizer = model.tokenizer
        self.features = list(model.config.features or [])
        self.want_embedding = any(s in EMBEDDING_SCORES for s in self.scores)
        self.want_segment = "segment" in self.scores
        self.want_llr = "llr" in self.scores
        self.need_forward = self.want_embedding or self.want_segment
        self.max_edit = self.plan.crop
        self.min_contig = NUC_PER_TOKEN
        self.max_tokens = None if model.config.rotary else model.config.max_tokens
        self.group_jobs, self.group_windows = group_jobs, group_windows
        self._refs: OrderedDict = OrderedDict()
        self.pass_counts = Counter()

    # column / INFO names
    def value_names(self) -> list[str]:
        names = [s for s in self.scores if s != "segment"]
        if self.want_segment:
            names += [f"segment_{f}" for f in self.features]
        return names

    # hooks for model families with more outputs (NTv3: per-track values summarised in INFO, long table)
    def vcf_value_names(self) -> list[str]:
        """The values written as one INFO field each (``Number=A``)."""
        return self.value_names()

    def extra_info(self) -> list[InfoField]:
        return []

    def extra_info_values(self, names: list[str], rec_jobs: list) -> dict:
        return {}

    def table_schema(self, names: list[str]) -> dict:
        return {"chrom": pl.Utf8, "pos": pl.Int64, "id": pl.Utf8, "ref": pl.Utf8, "alt": pl.Utf8,
                "status": pl.Utf8, **{nm: pl.Float64 for nm in names}}

    def table_rows(self, base: tuple, names: list[str], vals: list) -> list[tuple]:
        return [(*base, *vals)]

    def describe(self, name: str, rc_average: bool) -> str:
        return _describe(name, self.window, rc_average, self.segment_radius)

    def model_line(self) -> str:
        return ""

    @staticmethod
    def info_id(name: str) -> str:
        if name.startswith("segment_"):
            return "NTK_SEG_" + "".join(c if c.isalnum() or c in "_." else "_" for c in name[len("segment_"):])
        return INFO_IDS[name]

    # -- preparing jobs -------------------------------------------------------------------------------------
    def check_alleles(self, job: _Job, kind: str, compare_ref: bool = False) -> bool:
        """The checks no model family can score past: symbolic and ``*`` alleles, a REF that is not sequence,
        lies off the contig (POS 0, a telomere in VCF, or past the end) or (``compare_ref``) differs from the
        FASTA, an ALT that is not sequence. Sets ``job.status`` and returns False, or True to go on."""
        if kind == SYMBOLIC:
            job.status = "symbolic"
            return False
        if kind == STAR:
            job.status = "unsupported"
            return False
        ref_end = job.pos + len(job.ref)
        try:
            job.ref = normalise_sequence(job.ref)
        except InputError:
            job.status = "ref_mismatch"
            return False
        if job.pos < 0 or ref_end > self.fasta.lengths[job.chrom] or not job.ref or (
                compare_ref and self.fasta.fetch(job.chrom, job.pos, ref_end) != job.ref):
            job.status = "ref_mismatch"
            return False
        try:
            job.alt = normalise_sequence(job.alt)
        except InputError:
            job.status = "unsupported"
            return False
        return True

    def prepare(self, job: _Job, kind: str) -> None:
        """Set ``job.status`` when the allele cannot be scored, else its window."""
        if not self.check_alleles(job, kind):
            return
        L = self.fasta.lengths[job.chrom]
        ref_end = job.pos + len(job.ref)
        long_edit = max(len(job.ref), len(job.alt)) > self.max_edit
        loc = None if (long_edit or L < self.min_contig) else self.plan.locate(job.chrom, job.pos, ref_end)
        if loc is None or (self.model.config.is_segmentation and "N" in job.alt):
            if self.fasta.fetch(job.chrom, job.pos, ref_end) != job.ref:
                job.status = "ref_mismatch"
            elif long_edit or (loc is not None and "N" in job.alt):
                job.status = "unsupported"
            else:
                job.status = "no_context"
            return
        job.window, job.lo, job.hi = loc

    # -- reference windows ----------------------------------------------------------------------------------
    def _ref(self, w: Window, lo: int, hi: int, new: list[_RefWindow]) -> _RefWindow:
        key = (w.chrom, w.start, w.end)
        if key in self._refs:
            self._refs.move_to_end(key)
            return self._refs[key]
        a, b = max(lo, w.start - self.max_edit), min(hi, w.end + self.max_edit)
        seq = self.fasta.fetch(w.chrom, a, b)
        ws = seq[w.start - a:w.end - a]
        strands = [ws, reverse_complement(ws)] if self.rc_average else [ws]
        ref = _RefWindow(w, seq, a, [self.tokenizer.tokenize(s) for s in strands])
        if self.need_forward and not self._too_long(ref.tokens[0][0]):
            for r, toks in enumerate(ref.tokens):
                ref.passes.append(_Pass(toks[0], reverse=bool(r), want_embedding=self.want_embedding,
                                        probs_range=(0, w.length) if self.want_segment else None))
        self._refs[key] = ref
        new.append(ref)
        while len(self._refs) > 2 * self.group_windows:
            self._refs.popitem(last=False)
        return ref

    def _too_long(self, ids: np.ndarray) -> bool:
        """More tokens than a model with learned positions has (N-rich windows: every N is a token)."""
        return self.max_tokens is not None and len(ids) > self.max_tokens

    # -- scoring --------------------------------------------------------------------------------------------
    def score(self, jobs: Sequence[_Job], order: Callable[[str], int]) -> None:
        """Score every job whose status is still unset (sets status and values)."""
        todo = sorted((j for j in jobs if j.status is None),
                      key=lambda j: (order(j.chrom), j.window.start, j.pos, j.rec, j.alt_index))
        group: list[_Job] = []
        windows: set = set()
        for j in todo:
            key = (j.chrom, j.window.start)
            if group and key not in windows and (len(windows) >= self.group_windows or len(group) >= self.group_jobs):
                self._score_group(group)
                if self.on_scored is not None:
                    self.on_scored(len(group))
                group, windows = [], set()
            group.append(j)
            windows.add(key)
        if group:
            self._score_group(group)
            if self.on_scored is not None:
                self.on_scored(len(group))

    def _score_group(self, jobs: list[_Job]) -> None:
        new_refs: list[_RefWindow] = []
        refs = [self._ref(j.window, j.lo, j.hi, new_refs) for j in jobs]
        passes = [p for r in new_refs for p in r.passes]
        self.pass_counts["ref"] += len(passes)
        masked: dict[tuple, _Pass] = {}
        alt_passes: list[_Pass] = []
        for j, ref in zip(jobs, refs):
            if ref.window_seq()[j.pos - ref.window.start:j.pos - ref.window.start + len(j.ref)] != j.ref:
                j.status = "ref_mismatch"
                continue
            if self._too_long(ref.tokens[0][0]):
                j.status = "no_context"
                continue
            if self.need_forward and not self._add_alt_passes(j, ref, alt_passes):
                continue
            if self.want_llr:
                self._add_llr_passes(j, ref, masked)
        self.pass_counts["alt"] += len(alt_passes)
        self.pass_counts["masked"] += len(masked)
        self.runner.run(passes + alt_passes + list(masked.values()))
        for ref in new_refs:
            if self.want_segment:
                probs = [p.probs for p in ref.passes]
                ref.probs = probs[0] if len(probs) == 1 else (probs[0] + probs[1]) / 2
                for p in ref.passes:
                    p.probs = None
        for j, ref in zip(jobs, refs):
            if j.status is None:
                self._finish(j, ref)

    def _add_alt_passes(self, j: _Job, ref: _RefWindow, out: list[_Pass]) -> bool:
        w = ref.window
        alt_seq, alt_start = alternate_window(ref.seq, ref.seq_start, w.start, w.end, j.pos, len(j.ref), j.alt)
        if self.model.config.is_segmentation and len(alt_seq) != w.length:
            j.status = "no_context"  # SegmentNT windows are never padded or shortened
            return False
        strands = [alt_seq, reverse_complement(alt_seq)] if self.rc_average else [alt_seq]
        toks = [self.tokenizer.tokenize(s)[0] for s in strands]
        if any(self._too_long(t) for t in toks):
            j.status = "no_context"
            return False
        j.alt_start, j.alt_len = alt_start, len(alt_seq)
        rng = None
        if self.want_segment:
            R = self.segment_radius
            a = max(0, j.pos - R - alt_start)
            b = min(len(alt_seq), j.pos + len(j.alt) + R - alt_start)
            rng = (a, max(a, b))
        for r, t in enumerate(toks):
            p = _Pass(t, reverse=bool(r), want_embedding=self.want_embedding, probs_range=rng)
            j.alt_passes.append(p)
            out.append(p)
        return True

    def _add_llr_passes(self, j: _Job, ref: _RefWindow, masked: dict) -> None:
        diff = llr_changed_bases(j)
        if not diff:
            return
        w = ref.window
        wseq = ref.window_seq()
        lo, hi = j.pos + diff[0] - w.start, j.pos + diff[-1] - w.start + 1  # window coordinates
        alt_wseq = wseq[:j.pos - w.start] + j.alt + wseq[j.pos - w.start + len(j.ref):]
        parts = []
        for r, (ids, starts, ends) in enumerate(ref.tokens):
            a, b = (lo, hi) if r == 0 else (w.length - hi, w.length - lo)
            t = int(np.searchsorted(starts, a, side="right")) - 1  # token starting at or before a (CLS at 0)
            if t < 1 or ends[t] < b:
                return  # changed bases span two tokens on this strand
            s, e = int(starts[t]), int(ends[t])
            alt_tok = alt_wseq[s:e] if r == 0 else reverse_complement(alt_wseq)[s:e]
            key = (w.chrom, w.start, w.end, r, t)
            if key not in masked:
                mids = ids.astype(np.int64).copy()
                mids[t] = self.tokenizer.mask_id
                masked[key] = _Pass(mids, reverse=bool(r), mask_pos=t)
            parts.append((masked[key], int(ids[t]), self.tokenizer.token_to_id(alt_tok)))
        j.llr_parts = parts

    def _embedding_scores(self, j: _Job, ref: _RefWindow) -> None:
        """The embedding distances asked for (cosine, l2, ...) between REF and ALT, averaged over the strands."""
        n = len(j.alt_passes)
        acc = dict.fromkeys(EMBEDDING_SCORES, 0.0)
        for rp, ap in zip(ref.passes, j.alt_passes):
            for k, v in embedding_distances(rp.embedding, ap.embedding).items():
                acc[k] += v / n
        for k in EMBEDDING_SCORES:
            if k in self.scores:
                j.values[k] = acc[k]

    def _finish(self, j: _Job, ref: _RefWindow) -> None:
        if j.alt_passes and self.want_embedding:
            self._embedding_scores(j, ref)
        if j.alt_passes and self.want_segment:
            probs = [p.probs for p in j.alt_passes]
            alt = probs[0] if len(probs) == 1 else (probs[0] + probs[1]) / 2
            a = j.alt_passes[0].probs_range[0]
            delta = segment_delta(ref.probs, ref.window.start, alt, j.alt_start + a, j.pos, len(j.ref),
                                  len(j.alt), self.segment_radius)
            if delta is not None:
                for f, v in zip(self.features, delta):
                    j.values[f"segment_{f}"] = float(v)
            for p in j.alt_passes:
                p.probs = None
        if j.llr_parts:
            j.values["llr"] = float(np.mean([p.logp[alt] - p.logp[ref_id] for p, ref_id, alt in j.llr_parts]))
        j.alt_passes, j.llr_parts = [], []
        j.status = "ok" if j.values else "unsupported"


def embedding_distances(r: np.ndarray, a: np.ndarray) -> dict[str, float]:
    """cosine distance, L2, L1 and dot product of two mean embeddings (computed in float64)."""
    r, a = r.astype(np.float64), a.astype(np.float64)
    dot = float(r @ a)
    nr, na = float(np.linalg.norm(r)), float(np.linalg.norm(a))
    cos = 1.0 - dot / (nr * na) if nr > 0 and na > 0 else 0.0
    return {"cosine": cos, "l2": float(np.linalg.norm(r - a)), "l1": float(np.abs(r - a).sum()), "dot": dot}


def segment_delta(ref_probs: np.ndarray, ref_start: int, alt_probs: np.ndarray, alt_start: int, pos: int,
                  ref_len: int, alt_len: int, radius: int) -> np.ndarray | None:
    """Per feature max |p_alt - p_ref| over reference positions in ``[pos - radius, pos + ref_len + radius)``.

    ``ref_probs[i]`` is at reference coordinate ``ref_start + i``; ``alt_probs[j]`` is alternate-sequence
    position ``alt_start + j`` in the coordinates where the ALT starts at ``pos``. Bases after the edit shift
    by ``alt_len - ref_len``; inserted and deleted bases are not compared. ``None`` when nothing overlaps."""
    d = alt_len - ref_len
    r = np.arange(max(ref_start, pos - radius), min(ref_start + len(ref_probs), pos + ref_len + radius))
    keep = (r < pos + min(ref_len, alt_len)) | (r >= pos + ref_len)
    r = r[keep]
    j = r - alt_start + np.where(r >= pos + ref_len, d, 0)
    ok = (j >= 0) & (j < len(alt_probs))
    r, j = r[ok], j[ok]
    if not r.size:
        return None
    return np.abs(alt_probs[j] - ref_probs[r - ref_start]).max(axis=0)


# -- the whole job: VCF in, VCF/Parquet out -------------------------------------------------------------------

def _region_filter(regions: Sequence[Interval] | None) -> Callable[[str, int, int], bool] | None:
    if not regions:
        return None
    index: dict[str, tuple[list[int], list[int]]] = {}
    for iv in merge_overlapping(regions, list(dict.fromkeys(iv.chrom for iv in regions))):
        starts, ends = index.setdefault(iv.chrom, ([], []))
        starts.append(iv.start)
        ends.append(iv.end)

    def inside(chrom: str, start: int, end: int) -> bool:
        if chrom not in index:
            return False
        starts, ends = index[chrom]
        i = bisect.bisect_right(starts, max(start, end - 1)) - 1  # last region starting at or before the span end
        return i >= 0 and ends[i] > start
    return inside


def _chunks(it: Iterator, n: int) -> Iterator[list]:
    chunk = []
    for x in it:
        chunk.append(x)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _alts_per_record(path: str) -> list[int]:
    with VcfReader(path) as r:
        return [max(1, len(rec.alts or ())) for rec in r]


def shard_records(path: str, shard: tuple[int, int], chunk_size: int) -> tuple[int, int]:
    """Records ``[lo, hi)`` of shard ``I/N``: contiguous, balanced by variants (ALT alleles), cut only between the
    chunks of ``chunk_size`` records that an unsharded run scores together (so every pass runs in the same batch
    as in the unsharded run, and merged scores are identical)."""
    alts = np.asarray(_alts_per_record(path), dtype=np.int64)
    per_chunk = np.add.reduceat(alts, np.arange(0, alts.size, chunk_size)) if alts.size else alts
    lo, hi = shard_block(per_chunk, shard)
    return lo * chunk_size, min(hi * chunk_size, int(alts.size))


def score_variants(vcf: str, reference: str | IndexedFasta, *, log: Callable[[str], None] | None = None,
                   **options) -> ScoreSummary:
    """Score every ALT of every record of ``vcf`` (path or ``-``) against ``reference`` with ``model`` (a loaded
    :class:`ntk.NucleotideTransformer`, a checkpoint directory or a preset name); write the annotated VCF to
    ``output`` (``-`` = stdout, ``None`` = none) and/or the per-(record, ALT) table to ``table`` (Parquet).
    ``regions`` (1-based strings) / ``regions_file`` (BED) keep only the records that overlap them.
    Returns counts by status, forward passes and timings. Keyword options: the fields of
    :class:`ntk.pipelines.options.ScoreOptions` (``model``, ``scores``, ``window``, ``rc_average``,
    ``segment_radius``, ``output``, ``table``, ``regions``, ``regions_file``, ``chr_map``, ``device``,
    ``precision``, ``batch_size``, ``token_budget``, ``threads``, ``shard``, ``force``, ``progress``, ``command``,
    ``chunk_size``, ``resume``, ``species``); ``log(line)`` gets warnings.

    ``resume=True`` keeps the scores of every finished chunk of ``chunk_size`` records in
    ``.OUTPUT.ntk-partial/`` (beside ``output``, or ``table`` when the VCF goes to stdout) and, when the same
    run is started again after a kill, scores only the unfinished chunks (``summary.resume``: chunks reused and
    computed); the partial directory is removed once the outputs are written.

    NTv3 models (``species`` for post-trained ones): see ``pipelines/score_variants_ntv3.py``."""
    return run_score(ScoreOptions(vcf, reference, **options), log=log)


def run_score(o: ScoreOptions, log: Callable[[str], None] | None = None) -> ScoreSummary:
    """:func:`score_variants` with its options as one object. VCF records are read in chunks in a reader thread,
    scored in this one and written (VCF, table) in a writer thread (the engine's overlap)."""
    t0 = time.perf_counter()
    _check_score_options(o)
    fasta = o.reference if isinstance(o.reference, IndexedFasta) else IndexedFasta(o.reference)
    chr_map = read_chr_map(o.chr_map) if isinstance(o.chr_map, str) else o.chr_map
    inside = _region_filter(load_regions(o.regions, o.regions_file, fasta.lengths, chr_map))
    records = shard_records(o.vcf, o.shard, o.chunk_size) if o.shard is not None else None
    reader = VcfReader(o.vcf)
    out = None
    try:
        _check_vcf_contigs(reader, chr_map, fasta)
        model, prec = open_model(o.model, o.device, o.precision, o.threads, task="score", window=o.window,
                                 compile=o.compile)
        scorer = _scorer(o, model, fasta)
        if o.compile != "off":
            if not isinstance(getattr(scorer, "runner", None), PassRunner):
                raise NtkError("--compile: NTv3 models run eager for now (compilation covers the Nucleotide "
                               "Transformer forward); run without --compile")
            scorer.runner.compile(o.compile)
        why = zero_shot_not_informative(model)
        if why and log is not None:
            log(f"warning: this model's zero-shot scores are not informative ({why}): on held-out yeast they do not "
                "separate coding from intergenic or stop-gain from synonymous SNVs; use a released model (--model)")
        summary = ScoreSummary(scores=scorer.value_names(), window=scorer.window)
        out = _ScoreOutputs(o, reader, scorer, model, f"{prec.name} ({prec.reason})")
        inputs = {"vcf": o.vcf, "reference": fasta.path, "regions_file": o.regions_file}
        identity = _identity(o, scorer, chr_map)
        journal = None
        if o.resume:
            journal = open_journal("score-variants", "results", _kept_beside(o), o.shard, inputs,
                                   model.config.fingerprint(), identity, o.chunk_size, unit="records")
        job = _ScoreJob(scorer, fasta, chr_map, inside, reader.label, journal)
        with _progress(o.progress, _total_alleles(o, records)) as bar:
            job.bar = bar
            scorer.on_scored = job.scored if o.progress else None
            overlap(_numbered_chunks(reader, records, o.chunk_size), job.work,
                    lambda item: item is not None and out.write(item, summary))
        summary.indexed = out.close()
        if journal is not None:
            summary.resume = {"chunk_records": o.chunk_size, "chunks_reused": journal.reused,
                              "chunks_computed": journal.computed}
            journal.remove()
        if o.shard is not None:  # part manifests, for ntk merge
            for path, fmt in ((o.output, "vcf"), (o.table, "parquet")):
                if path is not None and path != "-":
                    write_part_manifest("score-variants", fmt, o.shard, inputs, model.config.fingerprint(), identity,
                                        {"records": list(records)}, manifest_path(path))
    except BaseException:
        if out is not None:
            out.abort()
        raise
    finally:
        reader.close()
    summary.passes = Counter(scorer.pass_counts)
    if o.compile != "off":
        summary.compile = scorer.runner.compiled.info()
    summary.seconds = time.perf_counter() - t0
    if o.output is not None and not summary.indexed and log:
        log(f"{o.output}: records are not sorted by position, so no tabix index was written")
    return summary


def _check_score_options(o: ScoreOptions) -> None:
    """Option errors before any input is read."""
    if o.output is None and o.table is None:
        raise NtkError("nothing to write: give -o (VCF, '-' for stdout) and/or --table")
    if o.table == "-":
        raise NtkError("--table needs a file name (the VCF is the stream output)")
    if o.segment_radius < 0:
        raise NtkError("--segment-radius must be >= 0")
    ref = o.reference.path if isinstance(o.reference, IndexedFasta) else o.reference
    refuse_inputs_as_outputs([o.output, o.table], [o.vcf, ref, o.regions_file,
                                                   o.chr_map if isinstance(o.chr_map, str) else None])
    if o.shard is not None and o.vcf == "-":
        raise NtkError("--shard needs a VCF file (stdin cannot be counted ahead)")
    if o.resume and (o.vcf == "-" or _kept_beside(o) is None):
        raise NtkError("--resume reads the same VCF again and keeps finished chunks beside the output: give a VCF "
                       "file and -o FILE or --table FILE")


def _kept_beside(o: ScoreOptions) -> str | None:
    """The output the resume journal is kept beside: the VCF file, else the table."""
    return o.output if o.output not in (None, "-") else o.table


def _check_vcf_contigs(reader: VcfReader, chr_map: dict | None, fasta: IndexedFasta) -> None:
    """chr1 vs 1 naming mismatches between the VCF header and the FASTA: one error naming the fix."""
    mapped = [chr_map.get(c, c) if chr_map else c for c in reader.contigs]
    fixable = [c for c in mapped if c not in fasta.lengths and suggest_contig(c, fasta.lengths)]
    if fixable:
        check_contig_naming(fixable, fasta.lengths, f"{reader.label} (VCF header)")


def _scorer(o: ScoreOptions, model, fasta: IndexedFasta) -> VariantScorer:
    """The scorer of the model's family, its scores and window checked."""
    from .score_variants_ntv3 import is_ntv3, ntv3_scorer
    if is_ntv3(model):
        return ntv3_scorer(model, fasta, o.scores, o.window, o.rc_average, o.segment_radius, o.token_budget,
                           o.batch_size, o.species)
    if o.species is not None:
        raise NtkError("--species: only NTv3 post-trained models are conditioned on a species")
    score_names = parse_scores(o.scores, model)
    W = model.config.check_window(o.window, "score")
    return VariantScorer(model, fasta, score_names, W, o.rc_average, o.segment_radius, o.token_budget, o.batch_size)


def _identity(o: ScoreOptions, scorer: VariantScorer, chr_map: dict | None) -> dict:
    """The options that shape the output (part manifests, resume journal)."""
    return {"scores": scorer.value_names(), "window": scorer.window, "rc_average": o.rc_average,
            "segment_radius": o.segment_radius, "regions": list(o.regions) or None,
            "chr_map": sorted(chr_map.items()) if chr_map else None, "chunk_size": o.chunk_size,
            **({"species": o.species} if o.species is not None else {})}


def _total_alleles(o: ScoreOptions, records: tuple[int, int] | None) -> int | None:
    """The total of the progress bar, from the start: one quick pass over the file."""
    if not o.progress or o.vcf == "-":
        return None
    alts = _alts_per_record(o.vcf)
    return sum(alts[records[0]:records[1]]) if records is not None else sum(alts)


def _numbered_chunks(reader: VcfReader, records: tuple[int, int] | None, chunk_size: int) -> Iterator:
    """``(chunk index, [(record number, record)])`` of the records of this run (a shard's, or all)."""
    numbered = ((k, rec) for k, rec in enumerate(reader, 1)
                if records is None or records[0] <= k - 1 < records[1])
    return enumerate(_chunks(numbered, chunk_size))


class _ScoreJob:
    """The model side of a run: one chunk of records -> its results (from the resume journal when an earlier run
    finished it), and the progress bar in alleles."""

    def __init__(self, scorer: VariantScorer, fasta: IndexedFasta, chr_map, inside, label: str, journal):
        self.scorer, self.fasta, self.chr_map, self.inside, self.label = scorer, fasta, chr_map, inside, label
        self.journal = journal
        self.order_rank = {c: i for i, c in enumerate(fasta.names)}
        self.done = [0, 0]  # alleles of the finished chunks, alleles scored in the current one
        self.bar: Callable[[int], None] = lambda n: None

    def scored(self, n: int) -> None:
        self.done[1] += n
        self.bar(self.done[0] + self.done[1])

    def work(self, item: tuple[int, list]) -> tuple[list, list]:
        ci, chunk = item
        journal = self.journal
        if journal is not None and journal.has(ci):  # finished before the run was interrupted
            results = json.loads(str(journal.load(ci)["results"]))
        else:
            results = _score_chunk(chunk, self.scorer, self.fasta, self.chr_map, self.inside, self.label,
                                   self.order_rank)
            if journal is not None:
                journal.save(ci, {"results": np.array(json.dumps(results))})
        self.done[0] += sum(max(1, len(rec.alts or ())) for _, rec in chunk)
        self.done[1] = 0
        self.bar(self.done[0])
        return chunk, results


class _ScoreOutputs:
    """The annotated VCF and/or the Parquet table of a run (header lines name the model, window and command)."""

    def __init__(self, o: ScoreOptions, reader: VcfReader, scorer: VariantScorer, model, precision: str = ""):
        self.scorer, self.writer, self.table_writer = scorer, None, None
        W, names = scorer.window, scorer.value_names()
        info = [InfoField(scorer.info_id(nm), "A", "Float", scorer.describe(nm, o.rc_average))
                for nm in scorer.vcf_value_names()]
        info += scorer.extra_info()
        info.append(InfoField(STATUS_INFO, "A", "String",
                              "ntk score-variants status per ALT: " + ", ".join(STATUSES)))
        source = getattr(model, "source", None) or "?"
        extra = [f"##ntkVersion={__version__}",
                 f"##ntkCommand={o.command or 'ntk.pipelines.score_variants.score_variants'}",
                 f"##ntkModel={source}; fingerprint={model.config.fingerprint()}; window={W}; "
                 f"rc_average={str(o.rc_average).lower()}{scorer.model_line()}"]
        if precision:
            extra.append(f"##ntkPrecision={precision}")
        if o.table is not None:
            check_writable_target(o.table, o.force)
        if o.output is not None:
            self.writer = VcfWriter(o.output, reader.header, info, extra, force=o.force)
        if o.table is not None:
            self.schema = scorer.table_schema(names)
            self.table_writer = ParquetStreamWriter(o.table, self.schema, metadata={
                "ntk_version": __version__, "ntk_command": o.command or "", "model": source,
                "model_fingerprint": model.config.fingerprint(), "window": W, "rc_average": o.rc_average,
                **({"precision": precision} if precision else {})})

    def write(self, item: tuple[list, list], summary: ScoreSummary) -> None:
        chunk, results = item
        rows = _write_chunk(chunk, results, self.scorer, self.writer, summary)
        if self.table_writer is not None and rows:
            self.table_writer.write(pl.DataFrame(rows, schema=self.schema, orient="row"))

    def close(self) -> bool:
        """Finish both outputs; True when the VCF was indexed (or there is none)."""
        if self.table_writer is not None:
            self.table_writer.close()
        return self.writer.close() if self.writer is not None else True

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
        if self.table_writer is not None:
            self.table_writer.abort()


def _score_chunk(chunk: list, scorer: VariantScorer, fasta: IndexedFasta, chr_map, inside, label: str,
                 order_rank: dict) -> list:
    """Score one chunk of ``(record number, record)`` pairs. Per record: ``None`` (outside the regions) or one
    ``[alt_index, status, [value per score name, None = missing]]`` per ALT (plain data: what ``--resume``
    keeps of a finished chunk)."""
    jobs: list[_Job] = []
    per_record: list[list[_Job] | None] = []
    for k, (number, rec) in enumerate(chunk):
        chrom = chr_map.get(rec.chrom, rec.chrom) if chr_map else rec.chrom
        if chrom not in fasta.lengths:
            raise InputError(f"{label}: record {number} ({rec.chrom}:{rec.pos}): contig {rec.chrom!r} "
                             f"is not in the FASTA{suggest_contig(chrom, fasta.lengths) or ' (pass --chr-map FILE)'}")
        if inside is not None and not inside(chrom, rec.start, rec.stop):
            per_record.append(None)
            continue
        rec_jobs = []
        for allele in split_alts(rec):
            j = _Job(k, allele.index, chrom, rec.pos - 1, allele.ref, allele.alt)
            scorer.prepare(j, allele.kind)
            rec_jobs.append(j)
        per_record.append(rec_jobs)
        jobs.extend(rec_jobs)
    scorer.score(jobs, lambda c: order_rank[c])
    names = scorer.value_names()
    return [None if rec_jobs is None else [[j.alt_index, j.status, [j.values.get(nm) for nm in names]]
                                           for j in rec_jobs] for rec_jobs in per_record]


def _write_chunk(chunk: list, results: list, scorer: VariantScorer, writer: VcfWriter | None,
                 summary: ScoreSummary) -> list:
    """Write the scored records of a chunk in input order; return the table rows."""
    rows = []
    names = scorer.value_names()
    for (_, rec), rec_jobs in zip(chunk, results):
        if rec_jobs is None:
            continue
        summary.records += 1
        summary.alleles += len(rec_jobs)
        for _, status, _ in rec_jobs:
            summary.status[status] += 1
        if writer is not None:
            values: dict = {}
            if rec_jobs:
                for nm in scorer.vcf_value_names():
                    i = names.index(nm)
                    vals = tuple(v[i] for _, _, v in rec_jobs)
                    values[scorer.info_id(nm)] = vals if any(v is not None for v in vals) else None
                values.update(scorer.extra_info_values(names, rec_jobs))
                values[STATUS_INFO] = tuple(status for _, status, _ in rec_jobs)
            writer.write(rec, values)
        for alt_index, status, vals in rec_jobs:
            rows.extend(scorer.table_rows((rec.chrom, rec.pos, rec.id, rec.ref, rec.alts[alt_index], status), names,
                                          vals))
    return rows


def _describe(name: str, window: int, rc: bool, radius: int) -> str:
    strands = " averaged over both strands" if rc else ""
    what = {
        "cosine": "cosine distance (1 - cosine similarity) between mean final-layer embeddings of reference and "
                  "alternate windows",
        "l2": "Euclidean distance between mean final-layer embeddings of reference and alternate windows",
        "l1": "L1 distance between mean final-layer embeddings of reference and alternate windows",
        "dot": "dot product (similarity) of mean final-layer embeddings of reference and alternate windows",
        "llr": "log p(alt token) - log p(ref token) at the masked token covering the variant (substitutions "
               "within one token)",
    }.get(name)
    if what is None:
        what = (f"max |p_alt - p_ref| of SegmentNT feature {name[len('segment_'):]} within {radius} nt of the "
                "variant")
    return f"ntk score-variants: {what}; {window}-nt windows{strands}"


class _progress:
    """A progress bar: variants (ALT alleles) scored of the total, through a :class:`ntk.report.Reporter`
    (``True``: the process-wide default one, see ntk/report.py); a no-op when disabled."""

    def __init__(self, enabled: bool | Reporter, total: int | None = None):
        self.enabled = enabled
        self.total = total
        self._r: Reporter | None = None
        self._shown = 0

    def __enter__(self):
        if not self.enabled:
            return lambda *a: None
        self._r = self.enabled if isinstance(self.enabled, Reporter) else default_reporter()
        self._r.start("score-variants", self.total, "variants")
        return self._update

    def _update(self, n: int) -> None:
        n = min(n, self.total) if self.total is not None else n
        self._r.advance(n - self._shown)
        self._shown = n

    def __exit__(self, *a):
        if self._r is not None:
            self._r.finish()

