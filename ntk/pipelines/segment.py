"""Genome-wide segmentation (SegmentNT, NTv3 BED head) and NTv3 functional tracks (``ntk tracks``, BigWig head):
FASTA -> per-nucleotide BigWigs (+ thresholded segments BED for segmentation).

What differs between model families (window unit, tiling, N handling, tokens, centre crop, which head) is asked
of ``pipelines/family.py``; the flow below is the same for all.

The flow, streaming contig by contig (memory does not grow with the genome):

1. **Work units** (:func:`plan_units`): whole contigs, or the merged ``-r``/``-R`` regions, in FASTA order. A
   deterministic list, so that a run can later be split into shards.
2. **Runs and windows** (``Family.jobs``): each unit is read in blocks to find its ACGT runs. SegmentNT: N and
   IUPAC codes split runs (SegmentNT never sees N), and each run is tiled by ``plan/windows.tile`` with
   windows of a multiple of 24 nt (6 nt per token x 4 for the two U-Net pooling levels), never padded; each
   position is owned by one window (the central part of each window, except at run ends), and near the
   boundary between neighbouring windows the two windows' predictions are blended (``blend``: a linear ramp
   across their overlap by default; see ``plan/windows``), so that no step shows where windows meet.
   NTv3: see ``pipelines/family.py`` (kept centres abut: cut, nothing to blend).
3. **Batches** (:func:`iter_batches`): consecutive windows of equal length, within a token budget.
4. The engine's overlap (``pipelines/engine.overlap``): a reader thread reads and tokenizes batches (pinned
   memory on CUDA), the main thread runs the model under
   ``torch.inference_mode()`` with the reference rotary rescaling for the window length, and a writer thread
   blends and cuts the kept part of each window and streams it, in genome order, to the outputs
   (:class:`TrackOutputs`): one float32 BigWig per feature, the segments BED (bgzip + tabix) and optionally
   one feature as bedGraph on a stream.

Everything is written into a temporary directory that replaces ``out_dir`` only when the run succeeds. Shards
(``engine.shard_span``), the ``--resume`` journal, run.json and the part manifest come from ``pipelines/engine.py``;
options are one :class:`~ntk.pipelines.options.SegmentOptions` (:func:`run_segment`).
"""
from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .. import __version__
from ..errors import NtkError
from ..io.atomic import atomic_dir, refuse_inputs_as_outputs
from ..io.fasta import IndexedFasta
from ..io.intervals import Interval, load_regions, read_chr_map
from ..io.track_outputs import TrackOutputs
from ..plan.batching import auto_token_budget, by_token_budget
from .family import Family, Job, NTv3Family, family_of
from ..model.runtime import resolve_device
from .engine import open_journal, open_model, overlap, shard_span, write_part_manifest, write_run_json
from .options import SegmentOptions
from .resume import CHUNK_BP, Journal
from .shards import DIR_MANIFEST
from ..plan.windows import BLEND_MODES, Blender, Window

NT_PER_TOKEN = 6


# ---------------------------------------------------------------------------------------------------
# work units, runs, windows, batches

def plan_units(fasta: IndexedFasta, regions: Sequence[str] = (), regions_file: str | None = None,
               chr_map: dict[str, str] | None = None) -> list[Interval]:
    """Whole contigs, or the given regions merged where they overlap; sorted in FASTA contig order."""
    if not regions and not regions_file:
        return [Interval(c.name, 0, c.length) for c in fasta.contigs if c.length > 0]
    return load_regions(regions, regions_file, fasta.lengths, chr_map, merge=True)


def iter_windows(fasta: IndexedFasta, units: Sequence[Interval], window: int, crop: int, family: Family) -> Iterator[Job]:
    """The windows of the work units, in order (the tiling of the model's ``family``)."""
    return family.jobs(fasta, units, window, crop)


def iter_batches(jobs: Iterable[Job], token_budget: int, max_items: int | None, copies: int = 1,
                 tokens: Callable[[int], int] | None = None) -> Iterator[list[Job]]:
    """Consecutive jobs of equal window length (windows are never padded), within the token budget
    (``copies`` = 2 when the reverse complement runs in the same forward pass; ``tokens(window_length)``: tokens
    of a window, SegmentNT's by default)."""
    tokens = tokens or (lambda n: n // NT_PER_TOKEN + 1)
    for _, group in itertools.groupby(jobs, key=lambda j: j.window.length):
        yield from by_token_budget(group, lambda j: copies * tokens(j.window.length), token_budget, max_items)


def compile_forward(fam: Family, mode: str, window: int, budget: int, max_items: int | None, copies: int = 1,
                    backend: str | None = None):
    """``fam``'s forward compiled (``--compile``) for the one shape it is worth compiling for: a full batch of
    full windows as :func:`iter_batches` makes them (``copies`` rows per window with ``--rc-average``); batches
    of the window with at least half those rows are padded to it, others run eager (ntk/model/compiled.py)."""
    n_tok = fam.tokens(window)
    items = max(1, budget // (copies * n_tok))
    items = min(items, max_items) if max_items else items
    return fam.compile(mode, (copies * items, n_tok), backend=backend)


def select_batches(batches: Iterable[list[Job]], bp_range: tuple[int, int] | None = None,
                   skip: Callable[[int], bool] | None = None) -> Iterator[tuple[list[Job], bool]]:
    """``(batch, own)``: the batches of a shard (first kept position of the batch's first window in
    ``bp_range``) that ``skip`` does not exclude (finished ``--resume`` chunks), with ``own=True``; and, with
    ``own=False``, the batch just before and just after each stretch of them: their windows are run only so
    that the edge windows of the stretch are blended with their neighbours exactly as in one whole run.
    Shards and resume chunks are cut between the batches of an unsharded run, never inside one, so every window
    runs in exactly the batch it would run in alone (batch composition changes float rounding on some backends)
    and the merged output is bit-identical."""
    prev: list[Job] | None = None
    prev_own = prev_sent = False
    for b in batches:
        g = b[0].gpos
        if bp_range is not None and g >= bp_range[1]:
            if prev_own:
                yield b, False
            return
        own = (bp_range is None or g >= bp_range[0]) and (skip is None or not skip(g))
        sent = False
        if own:
            if prev is not None and not prev_own and not prev_sent:
                yield prev, False
            yield b, True
            sent = True
        elif prev_own:
            yield b, False
            sent = True
        prev, prev_own, prev_sent = b, own, sent


# ---------------------------------------------------------------------------------------------------
# the job

@dataclass
class SegmentResult:
    """What a run did (returned; the CLI prints it as the summary)."""

    out_dir: Path | None
    features: list[str]
    units: list[Interval]
    window: int
    crop: int
    blend: str = "linear"
    bp_total: int = 0
    bp_scored: int = 0
    n_windows: int = 0
    n_segments: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    run_info: dict = field(default_factory=dict)
    compile: dict = field(default_factory=lambda: {"mode": "off"})  # --compile: mode, shape, batches compiled/eager
    shard: tuple[int, int] | None = None
    bp_range: tuple[int, int] = (0, 0)  # the positions of this run (all, or a shard's), units laid end to end
    spans: list[list] = field(default_factory=list)  # [chrom, start, end] covered by kept windows, genome order
    resume: dict | None = None  # chunks reused / computed with --resume


@dataclass
class _Plan:
    """The resolved inputs of one run: what the model, the options and the FASTA fix before any window runs."""

    fam: Family
    head: str
    features: list[str]
    feat_idx: list[int]
    species: str | None  # as given, or the species an ntk-fine-tuned NTv3 model was fine-tuned with
    species_id: int | None
    window: int
    crop: int
    budget: int
    units: list[Interval]
    bp_range: tuple[int, int]
    bedgraph_index: int | None
    shard: tuple[int, int] | None
    compile: str = "off"  # --compile: off, on, cudagraphs (ntk/model/compiled.py)


def note_span(spans: list[list], chrom: str, start: int, end: int) -> None:
    """Extend the covered spans ([chrom, start, end], genome order) with a kept window part."""
    if spans and spans[-1][0] == chrom:
        spans[-1][2] = end
    else:
        spans.append([chrom, start, end])


def segment_genome(fasta: str | os.PathLike, out_dir: str | os.PathLike | None, *,
                   progress: Callable[[int], None] | None = None, on_start: Callable[[int], None] | None = None,
                   log: Callable[[str], None] | None = None, bedgraph_stream: BinaryIO | None = None,
                   **options) -> SegmentResult:
    """Segment ``fasta`` with a SegmentNT-type ``model`` (checkpoint dir, preset, or a loaded model) into
    ``out_dir`` (``<feature>.bw``, ``segments.bed.gz`` + ``.tbi``, ``run.json``), and/or stream one feature as
    bedGraph to ``bedgraph_stream`` (default stdout; values rounded to ``bedgraph_digits`` decimals, equal
    neighbours merged; ``None`` = full float32). Segments join stretches above ``threshold`` that are at most
    ``merge_gap`` positions apart (see :mod:`ntk.io.segments`). ``progress(bp)`` is called as positions are done and
    ``on_start(total_bp)`` once before the first window. Keyword options: the fields of
    :class:`ntk.pipelines.options.SegmentOptions` (``model``, ``regions``, ``regions_file``, ``chr_map``,
    ``features``, ``window``, ``crop``, ``rc_average``, ``blend``, ``threshold``, ``min_length``, ``merge_gap``,
    ``bedgraph``, ``bedgraph_digits``, ``zoom_levels``, ``device``, ``precision``, ``batch_size``, ``threads``,
    ``force``, ``command``, ``shard``, ``resume``, ``resume_chunk_bp``, ``species``, ``head``).

    ``shard=(I, N)`` runs only the I-th of N blocks of the genome (balanced by bp, cut between windows) and adds
    the part manifest ``shard.json`` (join the parts with ``ntk merge``). ``resume=True`` keeps finished chunks
    of ``resume_chunk_bp`` positions beside ``out_dir`` and, when started again, computes only the others.
    ``blend``: how neighbouring windows' predictions are joined across their overlap (``linear``, ``cosine``,
    or ``none``: cut at the middle of the overlap); a position covered by one window only gets its value.
    ``log(line)`` gets start-up notes (the compute precision and why).

    NTv3 post-trained models need ``species`` (one of the model's). ``head="bigwig"`` (what ``ntk tracks``
    runs, see ``pipelines/tracks.py``) writes the BigWig-track head instead: ``features`` are then track ids,
    one float32 BigWig each, and no segments BED. NTv3 windows are cut (their heads predict only the centre)."""
    return run_segment(SegmentOptions(fasta, out_dir, **options), progress=progress, on_start=on_start, log=log,
                       bedgraph_stream=bedgraph_stream)


def run_segment(o: SegmentOptions, *, progress: Callable[[int], None] | None = None,
                on_start: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None,
                bedgraph_stream: BinaryIO | None = None) -> SegmentResult:
    """:func:`segment_genome` with its options as one object."""
    t0 = time.perf_counter()
    _check_options(o)
    fa = IndexedFasta(o.fasta)
    try:
        units = plan_units(fa, o.regions, o.regions_file, read_chr_map(o.chr_map))
        m, prec = open_model(o.model, o.device, o.precision, o.threads, task="segment", window=o.window,
                             compile=o.compile)
        plan = _plan(o, m, units)
        kind = "tracks" if o.head == "bigwig" else "segment"
        journal = None
        if o.resume:
            out = Path(o.out_dir)
            if out.exists() and (not out.is_dir() or any(out.iterdir())) and not o.force:
                raise NtkError(f"{out}: output directory is not empty (use --force to overwrite); nothing to resume")
            journal = open_journal(kind, "segment-dir", o.out_dir, o.shard, _inputs(o), m.config.fingerprint(),
                                   _identity(o, plan), o.resume_chunk_bp or CHUNK_BP)
        stream = bedgraph_stream if bedgraph_stream is not None else (sys.stdout.buffer if o.bedgraph else None)
        result = SegmentResult(Path(o.out_dir) if o.out_dir is not None else None, plan.features, units,
                               plan.window, plan.crop, o.blend, bp_total=sum(u.length for u in units),
                               shard=o.shard, bp_range=plan.bp_range)
        result.timings["load_model"] = time.perf_counter() - t0

        def run(tmp_dir: Path | None) -> None:
            if log is not None:  # once the inputs are checked: a bad input stays a one-line error
                log(f"precision: {prec.name} ({prec.reason})")
            chrom_sizes = [(c.name, c.length) for c in fa.contigs]
            outputs = TrackOutputs(tmp_dir, chrom_sizes, plan.features, o.threshold, o.min_length,
                                   plan.bedgraph_index, stream, o.zoom_levels, segments=o.head == "bed",
                                   merge_gap=o.merge_gap, bedgraph_digits=o.bedgraph_digits)
            try:
                done = _run(fa, m, plan, o.rc_average, o.batch_size, o.blend, outputs, journal, progress, on_start)
                outputs.close()
            except BaseException:
                outputs.abort()
                raise
            result.n_windows, result.spans, result.resume = done.n_windows, done.spans, done.resume
            result.timings["model"] = done.model_seconds
            result.compile = done.compile
            result.bp_scored = outputs.bp_written
            result.n_segments = outputs.segments.n_segments if outputs.segments is not None else 0
            result.timings["total"] = time.perf_counter() - t0
            result.run_info = _run_info(o, m, plan, result)
            result.run_info["runtime"]["precision"] = prec.as_json()
            result.run_info["runtime"]["compile"] = result.compile
            if tmp_dir is not None:
                write_run_json(tmp_dir, result.run_info)
                if o.shard is not None:
                    write_part_manifest(kind, "segment-dir", o.shard, _inputs(o), m.config.fingerprint(),
                                        _identity(o, plan), {"chrom_sizes": chrom_sizes, "spans": result.spans,
                                                             "run": result.run_info}, tmp_dir / DIR_MANIFEST)

        if o.out_dir is None:
            run(None)
        else:
            with atomic_dir(o.out_dir, force=o.force) as tmp:
                run(tmp)
            if journal is not None:
                journal.remove()
    finally:
        fa.close()
    return result


def _check_options(o: SegmentOptions) -> None:
    """Option errors that need neither the FASTA nor the model."""
    if o.out_dir is None and o.bedgraph is None:
        raise NtkError("nothing to write: give an output directory (-o) and/or --bedgraph FEATURE")
    if not 0.0 <= o.threshold <= 1.0:
        raise NtkError(f"--threshold {o.threshold}: must be a probability between 0 and 1")
    if o.min_length < 1:
        raise NtkError(f"--min-length {o.min_length}: must be >= 1")
    if o.blend not in BLEND_MODES:
        raise NtkError(f"--blend {o.blend!r}: expected one of {', '.join(BLEND_MODES)}")
    refuse_inputs_as_outputs([o.out_dir], [o.fasta, o.regions_file, o.chr_map])
    if o.merge_gap < 0:
        raise NtkError(f"--merge-gap {o.merge_gap}: must be >= 0")
    if o.bedgraph_digits is not None and not 0 <= o.bedgraph_digits <= 9:
        raise NtkError(f"--bedgraph-precision {o.bedgraph_digits}: expected 0..9 decimals or 'full'")


def _plan(o: SegmentOptions, m, units: list[Interval]) -> _Plan:
    """Features, head, species, window and shard of a run, checked against the model (errors name the option)."""
    fam = family_of(m)
    is_ntv3 = isinstance(fam, NTv3Family)
    if o.head == "bed" and not is_ntv3 and not m.config.is_segmentation:
        raise NtkError(f"model {o.model if isinstance(o.model, (str, os.PathLike)) else m.config.family!s} has no "
                       "segmentation head (not a SegmentNT-type checkpoint); use a SegmentNT or NTv3 post-trained "
                       "model with ntk segment")
    all_features = fam.head_names(o.head)
    species_id, species = None, o.species
    if is_ntv3:
        species_id = _species_id(m, species)
        if species is None and species_id is not None:  # fine-tuned post-trained model: its own species
            species = m.config.finetune_species
        if o.head == "bigwig":
            all_features = m.config.tracks_for(species)
            if not all_features:
                raise NtkError(f"--species {species}: this model has no BigWig tracks for it (species with tracks: "
                               f"{', '.join(s for s in m.species if m.config.tracks_for(s))})")
    elif species is not None:
        raise NtkError("--species: only NTv3 post-trained models are conditioned on a species")
    what = "track" if o.head == "bigwig" else "feature"
    feats = list(o.features) if o.features else all_features
    unknown = [f for f in feats if f not in all_features]
    if unknown:
        shown = ", ".join(all_features[:20]) + (f" ... ({len(all_features)} in all)" if len(all_features) > 20 else "")
        raise NtkError(f"--{what}s: unknown {what} {unknown[0]!r}; this model has: {shown}")
    if o.out_dir is not None:
        _check_open_files(len(feats), what)
    bg_index = None
    if o.bedgraph is not None:
        if o.bedgraph not in feats:
            raise NtkError(f"--bedgraph {o.bedgraph!r}: not among the features written ({', '.join(feats)})")
        bg_index = feats.index(o.bedgraph)
    window, crop = fam.resolve(o.window, o.crop)
    width = m.config.conv_init_embed_dim if is_ntv3 else m.config.hidden_size  # per-token activation width
    budget = auto_token_budget(m.device.type, width, m.config.num_hidden_layers)
    total = sum(u.length for u in units)
    if o.shard is not None and o.out_dir is None:
        raise NtkError("--shard needs an output directory (-o): the part is merged with ntk merge")
    if o.resume and o.out_dir is None:
        raise NtkError("--resume needs an output directory (-o): finished chunks are kept beside it")
    if o.compile != "off" and is_ntv3:
        raise NtkError("--compile: NTv3 models run eager for now (compilation covers the Nucleotide Transformer "
                       "and SegmentNT forward); run without --compile")
    return _Plan(fam, o.head, feats, [all_features.index(f) for f in feats], species, species_id, window, crop,
                 budget, units,
                 shard_span(total, o.shard) if o.shard is not None else (0, total), bg_index, o.shard, o.compile)


def _inputs(o: SegmentOptions) -> dict:
    return {"fasta": o.fasta, "regions_file": o.regions_file, "chr_map": o.chr_map}


def _identity(o: SegmentOptions, plan: _Plan) -> dict:
    """The options that shape the output (shard manifest and resume journal)."""
    options = {"regions": list(o.regions) or None, "features": plan.features, "window": plan.window,
               "crop": plan.crop, "rc_average": o.rc_average, "blend": o.blend, "threshold": o.threshold,
               "min_length": o.min_length, "merge_gap": o.merge_gap, "zoom_levels": o.zoom_levels}
    if isinstance(plan.fam, NTv3Family):  # only NTv3 runs carry these, so SegmentNT manifests stay as they were
        options.update(species=plan.species, head=o.head, segments=o.head == "bed")
    return options


@dataclass
class _RunStats:
    """What :func:`_run` did: windows run (of this run's own batches), covered spans, model seconds, resume counts."""

    n_windows: int = 0
    spans: list[list] = field(default_factory=list)
    model_seconds: float = 0.0
    resume: dict | None = None
    compile: dict = field(default_factory=lambda: {"mode": "off"})  # run.json runtime.compile


def _run(fa: IndexedFasta, m, plan: _Plan, rc_average: bool, max_items: int | None, blend: str,
         outputs: TrackOutputs, journal: Journal | None, progress: Callable[[int], None] | None,
         on_start: Callable[[int], None] | None) -> _RunStats:
    """Windows -> batches (reader thread) -> model (this thread) -> kept values (writer thread) -> ``outputs``
    (through the resume ``journal`` when there is one)."""
    dev = m.device
    pin = dev.type == "cuda"
    fam = plan.fam
    fidx = torch.as_tensor(plan.feat_idx, device=dev)
    lo, hi = plan.bp_range
    stats = _RunStats()
    keep = _KeptValues(outputs, journal, stats.spans, lo, hi, progress)
    write = _writer(keep, Blender(blend))
    copies = 2 if rc_average else 1
    compiled = None
    if plan.compile != "off":
        compiled = compile_forward(fam, plan.compile, plan.window, plan.budget, max_items, copies)

    def encode(item: tuple[list[Job], bool]):
        batch, own = item
        ids, valid = fam.encode(fa, batch, rc_average)
        return batch, own, ids.pin_memory() if pin else ids, valid

    def forward(item):
        batch, own, ids, valid = item
        probs, offset = fam.predict(ids.to(dev, non_blocking=pin), plan.head, fidx, len(batch), rc_average,
                                    plan.species_id)
        stats.n_windows += len(batch) if own else 0  # neighbours run only to blend are not counted
        return batch, own, probs.float().cpu().numpy(), offset, None if valid is None else valid.numpy()

    if on_start is not None:
        on_start(hi - lo)
    jobs = fam.jobs(fa, plan.units, plan.window, plan.crop)
    batches = ((b, True) for b in iter_batches(jobs, plan.budget, max_items, copies=copies, tokens=fam.tokens))
    if plan.shard is not None or journal is not None:
        batches = select_batches((b for b, _ in batches), plan.bp_range if plan.shard else None,
                                 journal.is_done if journal is not None else None)
    with torch.inference_mode():
        stats.model_seconds = overlap(map(encode, batches), forward, write)
    if compiled is not None:
        stats.compile = compiled.info()
    if journal is not None:
        journal.commit()
        journal.replay(keep.replayed)
        stats.resume = {"chunk_bp": journal.chunk_bp, "chunks_reused": journal.reused,
                        "chunks_computed": journal.computed}
    keep.advance_to(hi)
    return stats


class _KeptValues:
    """Where kept window values go: the outputs (and the covered spans), or the resume journal first; progress is
    advanced as positions (units laid end to end, N gaps included) are written."""

    def __init__(self, outputs: TrackOutputs, journal: Journal | None, spans: list[list], lo: int, hi: int,
                 progress: Callable[[int], None] | None):
        self.outputs, self.journal, self.spans, self.hi, self.progress = outputs, journal, spans, hi, progress
        self.cursor = lo

    def advance_to(self, g: int) -> None:
        if self.progress is not None and g > self.cursor:
            self.progress(g - self.cursor)
        self.cursor = max(self.cursor, g)

    def add(self, key: int, chrom: str, start: int, values: np.ndarray) -> None:
        """Values of positions ``start..`` of a window of the batch starting at ``key`` (journal chunks)."""
        if self.journal is not None:
            self.journal.add(key, chrom, start, values)
        else:
            self.outputs.add(chrom, start, values)

    def span(self, chrom: str, start: int, end: int) -> None:
        if self.journal is None:  # with --resume: noted as chunks are replayed
            note_span(self.spans, chrom, start, end)

    def replayed(self, chrom: str, start: int, values: np.ndarray) -> None:
        self.outputs.add(chrom, start, values)
        note_span(self.spans, chrom, start, start + values.shape[0])


def _writer(keep: _KeptValues, blender: Blender) -> Callable:
    """The writer thread's function: model outputs of a batch -> kept values, in genome order."""

    def emit(w: Window, kept: np.ndarray, payload) -> None:
        j, own, key = payload
        if not own:  # a neighbour run only to blend the edge of this run's own windows
            return
        keep.add(key, w.chrom, w.keep_start, kept)
        keep.span(w.chrom, w.keep_start, w.keep_end)
        keep.advance_to(min(j.gpos + w.keep_end - w.keep_start, keep.hi))

    def write(item) -> None:
        if item is None:  # end of the stream: the last window has no successor
            for done in blender.flush():
                emit(*done)
            return
        batch, own, probs, offset, valid = item
        if offset == 0 and valid is None:  # SegmentNT: whole windows, blended across their overlaps
            for j, p in zip(batch, probs):
                for done in blender.push(j.window, p, (j, own, batch[0].gpos)):
                    emit(*done)
        elif own:  # NTv3: values cover the heads' centre only and kept centres abut (cut)
            for k, (j, p) in enumerate(zip(batch, probs)):
                _write_centre(keep, batch[0].gpos, j, p, offset, None if valid is None else valid[k])

    return write


def _write_centre(keep: _KeptValues, key: int, j: Job, p: np.ndarray, offset: int, valid: np.ndarray | None) -> None:
    """NTv3: the kept centre of one window; N positions (``valid`` False) get no value."""
    w = j.window
    a, b = w.keep_start - w.start, w.keep_end - w.start
    kept = p[a - offset: b - offset]
    pieces = [(0, b - a)]
    if valid is not None:
        ok = valid[a:b]
        if not ok.all():
            d = np.diff(np.concatenate(([0], ok.view(np.int8), [0])))
            pieces = list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))
    for u, v in pieces:
        keep.add(key, w.chrom, w.keep_start + u, kept[u:v])
    if pieces:
        keep.span(w.chrom, w.keep_start, w.keep_end)
    keep.advance_to(min(j.gpos + w.keep_end - w.keep_start, keep.hi))


def _check_open_files(n: int, what: str) -> None:
    """One BigWig stays open per output: refuse up front when that exceeds the open-file limit."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and n > soft - 64:
        raise NtkError(f"{n} {what}s means {n} BigWigs open at once, over the open-file limit ({soft}); select "
                       f"fewer with --{what}s (or raise the limit: ulimit -n {n + 256})")


def _species_id(m, species: str | None) -> int | None:
    """The species id an NTv3 run is conditioned on: ``species`` (one of the model's), else, for a post-trained base
    fine-tuned by ntk, the species it was fine-tuned with; None for a pre-trained base fine-tuned by ntk finetune
    segment (it takes no species)."""
    if not m.config.is_post_trained:
        if m.config.segment_features:
            if species is not None:
                raise NtkError("--species: this NTv3 model (fine-tuned from a pre-trained base) is not conditioned "
                               "on a species")
            return None
        raise NtkError("this NTv3 model is pre-trained only (MLM head): ntk segment and ntk tracks need a "
                       "post-trained NTv3 model (BED-element and BigWig-track heads)")
    if species is None:
        species = m.config.finetune_species
    if species is None:
        raise NtkError(f"--species is required for this NTv3 model; choose one of: {', '.join(m.species)}")
    if species not in m.species:
        raise NtkError(f"--species {species!r}: not a species of this model; choose one of: {', '.join(m.species)}")
    return m.species_id(species)


def _model_info(m, species: str | None, head: str) -> dict:
    """Family-specific model facts for run.json (NTv3: species, the track metadata of a tracks run)."""
    if not isinstance(family_of(m), NTv3Family):
        return {"features": list(m.config.features or []), "max_tokens": m.config.max_tokens}
    cfg = m.config
    species = species or cfg.finetune_species
    info = {"species": species, "species_id": m.species_id(species) if species else None,
            "bed_elements": list(cfg.features),
            "keep_target_center_fraction": cfg.keep_target_center_fraction, "window_unit": cfg.window_unit}
    if head == "bigwig":
        tracks = cfg.tracks_for(species)
        info["tracks"] = {"species": species, "count": len(tracks), "ids": tracks,
                          "head": f"core.bigwig_head.species_heads.{m.species.index(species)}",
                          "transform": "softplus (the model's output, float32)"}
    return info


def _run_info(o: SegmentOptions, m, plan: _Plan, result: SegmentResult) -> dict:
    outputs = [f"{f}.bw" for f in result.features] + (["segments.bed.gz", "segments.bed.gz.tbi"]
                                                        if o.head == "bed" else []) + ["run.json"]
    dev = m.device if isinstance(o.model, torch.nn.Module) else resolve_device(o.device)
    species = plan.species
    return {
        "ntk_version": __version__,
        "command": o.command,
        "fasta": str(o.fasta),
        "model": {
            "source": str(o.model) if isinstance(o.model, (str, os.PathLike)) else None,
            "family": m.config.family,
            "fingerprint": m.config.fingerprint(),
            **_model_info(m, species, o.head),
        },
        "options": {
            "regions": list(o.regions) or None, "regions_file": o.regions_file, "features": result.features,
            "window": result.window, "crop": result.crop, "blend": result.blend, "rc_average": o.rc_average,
            "threshold": o.threshold, "min_length": o.min_length, "merge_gap": o.merge_gap, "bedgraph": o.bedgraph,
            "bedgraph_digits": o.bedgraph_digits if o.bedgraph else None, "zoom_levels": o.zoom_levels,
            **({"species": species, "head": o.head} if species is not None else {}),
        },
        "runtime": {"device": str(dev), "dtype": str(m.dtype).replace("torch.", ""), "torch": torch.__version__,
                    "numpy": np.__version__, "threads": torch.get_num_threads()},
        "shard": list(result.shard) if result.shard else None,
        "resume": result.resume,
        "units": [u.region_string() for u in result.units] if len(result.units) <= 1000 else len(result.units),
        "bp_total": result.bp_total,
        "bp_scored": result.bp_scored,
        "n_windows": result.n_windows,
        "n_segments": result.n_segments,
        "outputs": outputs if result.out_dir is not None else [],
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
    }
