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
4. A producer thread reads and tokenizes batches (pinned memory on CUDA), the main thread runs the model under
   ``torch.inference_mode()`` with the reference rotary rescaling for the window length, and a writer thread
   blends and cuts the kept part of each window and streams it, in genome order, to the outputs
   (:class:`TrackOutputs`): one float32 BigWig per feature, the segments BED (bgzip + tabix) and optionally
   one feature as bedGraph on a stream.

Everything is written into a temporary directory that replaces ``out_dir`` only when the run succeeds.
"""
from __future__ import annotations

import itertools
import json
import os
import queue
import sys
import threading
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
from ..io.segments import DEFAULT_MERGE_GAP
from ..io.track_outputs import TrackOutputs
from ..io.tracks import DEFAULT_BEDGRAPH_DIGITS
from ..plan.batching import auto_token_budget, by_token_budget
from .family import Family, Job, NTv3Family, family_of
from .resume import CHUNK_BP, Journal, partial_dir
from .shards import DIR_MANIFEST, bp_range, make_manifest, write_manifest
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
# threads: a producer feeding the model, a consumer writing its outputs

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _background(items: Iterable, maxsize: int, stop: threading.Event) -> Iterator:
    """Iterate ``items`` in a daemon thread, ``maxsize`` ahead; exceptions re-raise in the caller."""
    q: queue.Queue = queue.Queue(maxsize)

    def run():
        try:
            for it in items:
                if not _put(q, it, stop):
                    return
            _put(q, _DONE, stop)
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
            _put(q, _Failure(e), stop)

    t = threading.Thread(target=run, name="ntk-segment-reader", daemon=True)
    t.start()
    while True:
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():  # the consumer side failed: stop reading
                return
            continue
        if item is _DONE:
            return
        if isinstance(item, _Failure):
            raise item.exc
        yield item


class _Writer:
    """Runs ``fn(item)`` for each submitted item in a thread, in order; a failure re-raises on submit/join."""

    def __init__(self, fn: Callable, maxsize: int, stop: threading.Event):
        self._fn, self._stop = fn, stop
        self._q: queue.Queue = queue.Queue(maxsize)
        self._error: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="ntk-segment-writer", daemon=True)
        self._t.start()

    def _run(self):
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if self._error is None and not self._stop.is_set():
                try:
                    self._fn(item)
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    self._error = e
                    self._stop.set()

    def submit(self, item) -> None:
        self._check()
        _put(self._q, item, self._stop)
        self._check()

    def join(self, check: bool = True) -> None:
        """Wait until every submitted item is written (after ``stop`` is set: until the queue is drained)."""
        self._q.put(_DONE)
        self._t.join()
        if check:
            self._check()

    def _check(self):
        if self._error is not None:
            raise self._error


# ---------------------------------------------------------------------------------------------------
# the job

@dataclass
class SegmentResult:
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
    shard: tuple[int, int] | None = None
    bp_range: tuple[int, int] = (0, 0)  # the positions of this run (all, or a shard's), units laid end to end
    spans: list[list] = field(default_factory=list)  # [chrom, start, end] covered by kept windows, genome order
    resume: dict | None = None  # chunks reused / computed with --resume


def note_span(spans: list[list], chrom: str, start: int, end: int) -> None:
    """Extend the covered spans ([chrom, start, end], genome order) with a kept window part."""
    if spans and spans[-1][0] == chrom:
        spans[-1][2] = end
    else:
        spans.append([chrom, start, end])


def segment_genome(
    fasta: str | os.PathLike,
    out_dir: str | os.PathLike | None,
    *,
    model=None,
    regions: Sequence[str] = (),
    regions_file: str | None = None,
    chr_map: str | None = None,
    features: Sequence[str] | None = None,
    window: int | None = None,
    crop: int | None = None,
    rc_average: bool = False,
    blend: str = "linear",
    threshold: float = 0.5,
    min_length: int = 1,
    merge_gap: int = DEFAULT_MERGE_GAP,
    bedgraph: str | None = None,
    bedgraph_stream: BinaryIO | None = None,
    bedgraph_digits: int | None = DEFAULT_BEDGRAPH_DIGITS,
    zoom_levels: int = 10,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    threads: int | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    command: str | None = None,
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    resume_chunk_bp: int | None = None,
    log: Callable[[str], None] | None = None,
    species: str | None = None,
    head: str = "bed",
) -> SegmentResult:
    """Segment ``fasta`` with a SegmentNT-type ``model`` (checkpoint dir, preset, or a loaded model) into
    ``out_dir`` (``<feature>.bw``, ``segments.bed.gz`` + ``.tbi``, ``run.json``), and/or stream one feature as
    bedGraph to ``bedgraph_stream`` (default stdout; values rounded to ``bedgraph_digits`` decimals, equal
    neighbours merged; ``None`` = full float32). Segments join stretches above ``threshold`` that are at most
    ``merge_gap`` positions apart (see :mod:`ntk.io.segments`). ``progress(bp)`` is called as positions are done and
    ``on_start(total_bp)`` once before the first window.

    ``shard=(I, N)`` runs only the I-th of N blocks of the genome (balanced by bp, cut between windows) and adds
    the part manifest ``shard.json`` (join the parts with ``ntk merge``). ``resume=True`` keeps finished chunks
    of ``resume_chunk_bp`` positions beside ``out_dir`` and, when started again, computes only the others.
    ``blend``: how neighbouring windows' predictions are joined across their overlap (``linear``, ``cosine``,
    or ``none``: cut at the middle of the overlap); a position covered by one window only gets its value.
    ``log(line)`` gets start-up notes (the compute precision and why).

    NTv3 post-trained models need ``species`` (one of the model's). ``head="bigwig"`` (what ``ntk tracks``
    runs, see ``pipelines/tracks.py``) writes the BigWig-track head instead: ``features`` are then track ids,
    one float32 BigWig each, and no segments BED. NTv3 windows are cut (their heads predict only the centre)."""
    from ..model import load_model
    from ..model.checkpoint import check_window_before_loading
    from ..model.runtime import Precision, choose_precision, resolve_device, set_threads

    t0 = time.perf_counter()
    if out_dir is None and bedgraph is None:
        raise NtkError("nothing to write: give an output directory (-o) and/or --bedgraph FEATURE")
    if not 0.0 <= threshold <= 1.0:
        raise NtkError(f"--threshold {threshold}: must be a probability between 0 and 1")
    if min_length < 1:
        raise NtkError(f"--min-length {min_length}: must be >= 1")
    if blend not in BLEND_MODES:
        raise NtkError(f"--blend {blend!r}: expected one of {', '.join(BLEND_MODES)}")
    refuse_inputs_as_outputs([out_dir], [fasta, regions_file, chr_map])
    if merge_gap < 0:
        raise NtkError(f"--merge-gap {merge_gap}: must be >= 0")
    if bedgraph_digits is not None and not 0 <= bedgraph_digits <= 9:
        raise NtkError(f"--bedgraph-precision {bedgraph_digits}: expected 0..9 decimals or 'full'")
    fa = IndexedFasta(fasta)
    units = plan_units(fa, regions, regions_file, read_chr_map(chr_map))

    set_threads(threads)
    dev = resolve_device(device)
    if isinstance(model, torch.nn.Module):
        m = model
        dev = m.device
        prec = Precision(m.dtype, "given model")
    else:
        prec = choose_precision(precision, dev, task="segment")
        check_window_before_loading(model, window, "segment")  # from config.json, before the weights load
        m = load_model(model, device=dev, dtype=prec.dtype)
    m.eval()
    fam = family_of(m)
    is_ntv3 = isinstance(fam, NTv3Family)
    if head == "bed" and not is_ntv3 and not m.config.is_segmentation:
        raise NtkError(f"model {model if isinstance(model, (str, os.PathLike)) else m.config.family!s} has no "
                       "segmentation head (not a SegmentNT-type checkpoint); use a SegmentNT or NTv3 post-trained "
                       "model with ntk segment")
    all_features = fam.head_names(head)
    species_id = None
    if is_ntv3:
        species_id = _species_id(m, species)
        if species is None and species_id is not None:  # fine-tuned post-trained model: its own species
            species = m.config.finetune_species
        if head == "bigwig":
            all_features = m.config.tracks_for(species)
            if not all_features:
                raise NtkError(f"--species {species}: this model has no BigWig tracks for it (species with tracks: "
                               f"{', '.join(s for s in m.species if m.config.tracks_for(s))})")
    elif species is not None:
        raise NtkError("--species: only NTv3 post-trained models are conditioned on a species")
    what = "track" if head == "bigwig" else "feature"
    feats = list(features) if features else all_features
    unknown = [f for f in feats if f not in all_features]
    if unknown:
        shown = ", ".join(all_features[:20]) + (f" ... ({len(all_features)} in all)" if len(all_features) > 20 else "")
        raise NtkError(f"--{what}s: unknown {what} {unknown[0]!r}; this model has: {shown}")
    feat_idx = [all_features.index(f) for f in feats]
    if out_dir is not None:
        _check_open_files(len(feats), what)
    bg_index = None
    if bedgraph is not None:
        if bedgraph not in feats:
            raise NtkError(f"--bedgraph {bedgraph!r}: not among the features written ({', '.join(feats)})")
        bg_index = feats.index(bedgraph)
    window, crop = fam.resolve(window, crop)
    t_load = time.perf_counter() - t0

    width = m.config.conv_init_embed_dim if is_ntv3 else m.config.hidden_size  # per-token activation width
    budget = auto_token_budget(dev.type, width, m.config.num_hidden_layers)
    result = SegmentResult(Path(out_dir) if out_dir is not None else None, feats, units, window, crop, blend)
    result.bp_total = sum(u.length for u in units)
    result.bp_range = (0, result.bp_total)
    if shard is not None:
        result.shard = shard
        result.bp_range = bp_range(result.bp_total, shard)
        if out_dir is None:
            raise NtkError("--shard needs an output directory (-o): the part is merged with ntk merge")
    if resume and out_dir is None:
        raise NtkError("--resume needs an output directory (-o): finished chunks are kept beside it")
    chrom_sizes = [(c.name, c.length) for c in fa.contigs]
    stream = bedgraph_stream if bedgraph_stream is not None else (sys.stdout.buffer if bedgraph else None)

    options = {"regions": list(regions) or None, "features": feats, "window": window, "crop": crop,
               "rc_average": rc_average, "blend": blend, "threshold": threshold, "min_length": min_length,
               "merge_gap": merge_gap, "zoom_levels": zoom_levels}
    if is_ntv3:  # only NTv3 runs carry these, so SegmentNT manifests and journals stay as they were
        options.update(species=species, head=head, segments=head == "bed")
    kind = "tracks" if head == "bigwig" else "segment"
    inputs = {"fasta": fasta, "regions_file": regions_file, "chr_map": chr_map}
    journal = None
    if resume:
        o = Path(out_dir)
        if o.exists() and (not o.is_dir() or any(o.iterdir())) and not force:
            raise NtkError(f"{o}: output directory is not empty (use --force to overwrite); nothing to resume")
        ident = make_manifest(kind, "segment-dir", shard or (1, 1), inputs, m.config.fingerprint(), options)
        ident.pop("ntk_version")
        journal = Journal(partial_dir(out_dir), ident, resume_chunk_bp or CHUNK_BP)

    def run(tmp_dir: Path | None) -> None:
        if log is not None:  # once the inputs are checked: a bad input stays a one-line error
            log(f"precision: {prec.name} ({prec.reason})")
        outputs = TrackOutputs(tmp_dir, chrom_sizes, feats, threshold, min_length, bg_index, stream, zoom_levels,
                               segments=head == "bed", merge_gap=merge_gap, bedgraph_digits=bedgraph_digits)
        try:
            _run(fa, m, units, window, crop, rc_average, feat_idx, budget, batch_size, outputs, result, progress,
                 on_start, journal, blend, fam, head, species_id)
            if journal is not None:
                def add(chrom: str, start: int, values: np.ndarray) -> None:
                    outputs.add(chrom, start, values)
                    note_span(result.spans, chrom, start, start + values.shape[0])
                journal.replay(add)
                result.resume = {"chunk_bp": journal.chunk_bp, "chunks_reused": journal.reused,
                                 "chunks_computed": journal.computed}
            outputs.close()
        except BaseException:
            outputs.abort()
            raise
        result.bp_scored = outputs.bp_written
        result.n_segments = outputs.segments.n_segments if outputs.segments is not None else 0
        result.timings.update(load_model=t_load, total=time.perf_counter() - t0)
        result.run_info = _run_info(fasta, model, m, dev, result, regions, regions_file, rc_average, threshold,
                                    min_length, bedgraph, zoom_levels, command, species, head,
                                    merge_gap, bedgraph_digits)
        result.run_info["runtime"]["precision"] = prec.as_json()
        if tmp_dir is not None:
            (tmp_dir / "run.json").write_text(json.dumps(result.run_info, indent=2) + "\n")
        if tmp_dir is not None and shard is not None:
            write_manifest(make_manifest(kind, "segment-dir", shard, inputs, m.config.fingerprint(), options,
                                         {"chrom_sizes": chrom_sizes, "spans": result.spans,
                                          "run": result.run_info}), tmp_dir / DIR_MANIFEST)

    try:
        if out_dir is None:
            run(None)
        else:
            with atomic_dir(out_dir, force=force) as tmp:
                run(tmp)
            if journal is not None:
                journal.remove()
    finally:
        fa.close()
    return result


def _run(fa: IndexedFasta, m, units: list[Interval], window: int, crop: int, rc_average: bool,
         feat_idx: list[int], budget: int, max_items: int | None, outputs: TrackOutputs, result: SegmentResult,
         progress: Callable[[int], None] | None, on_start: Callable[[int], None] | None,
         journal: Journal | None = None, blend: str = "linear", fam: Family | None = None, head: str = "bed",
         species_id: int | None = None) -> None:
    dev = m.device
    pin = dev.type == "cuda"
    fam = fam if fam is not None else family_of(m)
    fidx = torch.as_tensor(feat_idx, device=dev)
    stop = threading.Event()

    def encode(item: tuple[list[Job], bool]):
        batch, own = item
        ids, valid = fam.encode(fa, batch, rc_average)
        if pin:
            ids = ids.pin_memory()
        return batch, own, ids, valid

    # progress: positions (units laid end to end, N gaps included) are done when the window keeping them is written
    lo, hi = result.bp_range
    cursor = [lo]

    def advance_to(g: int) -> None:
        if progress is not None and g > cursor[0]:
            progress(g - cursor[0])
        cursor[0] = max(cursor[0], g)

    spans = result.spans  # what the part covers, for ntk merge (with --resume: noted when chunks are replayed)

    blender = Blender(blend)

    def emit(w: Window, kept: np.ndarray, payload) -> None:
        j, own, key = payload
        if not own:  # a neighbour run only to blend the edge of this run's own windows
            return
        if journal is not None:
            journal.add(key, w.chrom, w.keep_start, kept)
        else:
            outputs.add(w.chrom, w.keep_start, kept)
            note_span(spans, w.chrom, w.keep_start, w.keep_end)
        advance_to(min(j.gpos + w.keep_end - w.keep_start, hi))

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
            return
        if not own:
            return
        # NTv3: values cover the heads' centre only and kept centres abut (cut); N positions get no value
        for k, (j, p) in enumerate(zip(batch, probs)):
            w = j.window
            a, b = w.keep_start - w.start, w.keep_end - w.start
            kept = p[a - offset: b - offset]
            pieces = [(0, b - a)]
            if valid is not None:
                ok = valid[k, a:b]
                if not ok.all():
                    d = np.diff(np.concatenate(([0], ok.view(np.int8), [0])))
                    pieces = list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))
            for u, v in pieces:
                if journal is not None:
                    journal.add(batch[0].gpos, w.chrom, w.keep_start + u, kept[u:v])
                else:
                    outputs.add(w.chrom, w.keep_start + u, kept[u:v])
            if journal is None and pieces:
                note_span(spans, w.chrom, w.keep_start, w.keep_end)
            advance_to(min(j.gpos + w.keep_end - w.keep_start, hi))

    if on_start is not None:
        on_start(hi - lo)
    jobs = fam.jobs(fa, units, window, crop)
    batches = ((b, True) for b in iter_batches(jobs, budget, max_items, copies=2 if rc_average else 1,
                                               tokens=fam.tokens))
    if result.shard is not None or journal is not None:
        batches = select_batches((b for b, _ in batches), result.bp_range if result.shard else None,
                                 journal.is_done if journal is not None else None)
    writer = _Writer(write, maxsize=4, stop=stop)
    t_model = 0.0
    try:
        with torch.inference_mode():
            for batch, own, ids, valid in _background(map(encode, batches), maxsize=3, stop=stop):
                t = time.perf_counter()
                ids = ids.to(dev, non_blocking=pin)
                probs, offset = fam.predict(ids, head, fidx, len(batch), rc_average, species_id)
                probs = probs.float().cpu().numpy()
                t_model += time.perf_counter() - t
                result.n_windows += len(batch) if own else 0  # neighbours run only to blend are not counted
                writer.submit((batch, own, probs, offset, None if valid is None else valid.numpy()))
            writer.submit(None)
    except BaseException:
        stop.set()  # the reader stops, the writer drops what is queued
        writer.join(check=False)
        raise
    writer.join()
    stop.set()
    if journal is not None:
        journal.commit()
    advance_to(hi)
    result.timings["model"] = t_model


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


def _run_info(fasta, model_arg, m, dev, result: SegmentResult, regions, regions_file, rc_average, threshold,
              min_length, bedgraph, zoom_levels, command, species=None, head="bed", merge_gap=0,
              bedgraph_digits=None) -> dict:
    outputs = [f"{f}.bw" for f in result.features] + (["segments.bed.gz", "segments.bed.gz.tbi"] if head == "bed"
                                                        else []) + ["run.json"]
    return {
        "ntk_version": __version__,
        "command": command,
        "fasta": str(fasta),
        "model": {
            "source": str(model_arg) if isinstance(model_arg, (str, os.PathLike)) else None,
            "family": m.config.family,
            "fingerprint": m.config.fingerprint(),
            **_model_info(m, species, head),
        },
        "options": {
            "regions": list(regions) or None, "regions_file": regions_file, "features": result.features,
            "window": result.window, "crop": result.crop, "blend": result.blend, "rc_average": rc_average,
            "threshold": threshold, "min_length": min_length, "merge_gap": merge_gap, "bedgraph": bedgraph,
            "bedgraph_digits": bedgraph_digits if bedgraph else None, "zoom_levels": zoom_levels,
            **({"species": species, "head": head} if species is not None else {}),
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
