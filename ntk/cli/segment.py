"""`ntk segment`: genome-wide per-nucleotide SegmentNT segmentation (options -> pipelines.segment)."""
from __future__ import annotations

import shlex
import sys
from typing import Annotated, Optional

import typer

from ..io.segments import DEFAULT_MERGE_GAP
from ..io.tracks import DEFAULT_BEDGRAPH_DIGITS
from .common import (BatchSizeOpt, ChrMapOpt, CompileOpt, DeviceOpt,
                     ForceOpt, GenomeResumeOpt, ModelOpt, PrecisionOpt, QuietOpt,
                     RegionOpt, ResumeChunkBpOpt, ZoomLevelsOpt,
                     RegionsFileOpt, ShardOpt, ThreadsOpt, console, parse_batch_size, parse_shard)

HELP = """Segment a genome with a SegmentNT model or an NTv3 post-trained model (BED-element head, --species):
per-nucleotide probability of each feature.

Writes OUTDIR/<feature>.bw (float32 BigWig, one value per nucleotide), OUTDIR/segments.bed.gz (+ .tbi: the
stretches at or above --threshold) and OUTDIR/run.json. N runs and IUPAC codes get no value. SegmentNT windows
never contain N and are never padded; NTv3 windows may contain N (short N gaps, contig ends). Without --model,
the small embedded yeast model is used.

\b
Examples:
  ntk segment genome.fa.gz -o seg/
  ntk segment genome.fa -m segment-nt -r chr1:1-2,000,000 -o seg/
  ntk segment genome.fa -R peaks.bed --features exon,intron -o seg/
  ntk segment genome.fa -m segment-nt -r chr2 --bedgraph exon | head
"""


NO_VALUE = "N and IUPAC codes get no value; for SegmentNT also ACGT runs shorter than 24 nt"


def run_genome_job(name: str, opts, quiet: bool):
    """Run a genome-tiling job (``ntk segment`` or ``ntk tracks``: one :class:`SegmentOptions`) with a progress bar,
    or, under torchrun, this rank's shard (returns None)."""
    from dataclasses import replace

    from ..errors import NtkError
    from ..pipelines.distributed import run_ranks, world_size
    from ..pipelines.segment import run_segment
    from .progress import progress_bar

    opts = replace(opts, command=shlex.join(["ntk"] + sys.argv[1:]))
    if world_size() > 1:  # torchrun: this rank runs shard RANK+1/WORLD_SIZE, rank 0 merges
        if opts.shard is not None or opts.bedgraph is not None or opts.out_dir is None:
            raise NtkError("under torchrun give -o OUTDIR, without --shard or --bedgraph (each rank takes one "
                           "shard; rank 0 merges)")
        run_ranks(opts.out_dir, opts.force, opts.device, quiet,
                  lambda part, sh, dev, q: run_segment(replace(opts, out_dir=part, device=dev, force=True, shard=sh)))
        return None
    progress = progress_bar(name, "bp", console, disable=quiet or not console.is_terminal)  # a terminal only
    task = progress.add_task(name, total=None)

    def start(total: int) -> None:  # the bar appears once inputs and model are checked (errors stay one line)
        progress.update(task, total=total)
        progress.start()

    def say(line: str) -> None:  # start-up notes (precision and why) on stderr
        console.print(line, markup=False, soft_wrap=True)

    try:
        return run_segment(opts, progress=lambda bp: progress.advance(task, bp), on_start=start,
                           log=None if quiet else say)
    finally:
        progress.stop()


SpeciesOpt = Annotated[Optional[str], typer.Option(
    "--species", help="NTv3 post-trained models: the species to condition on (one of the model's; `ntk models info "
    "MODEL` lists them)")]


def summarize(title: str, result, quiet: bool, what: str) -> None:
    """Warning when nothing was scored, then (unless quiet) the summary table on stderr."""
    from rich.table import Table

    if result.bp_scored == 0 and result.shard is None:  # an empty shard is normal (more shards than batches)
        console.print(f"[yellow]warning:[/yellow] no position was scored ({NO_VALUE})")
    if quiet:
        return
    t = result.timings
    table = Table(title=title, show_header=False, box=None)
    table.add_row("regions", f"{len(result.units)} ({result.bp_total:,} bp)")
    table.add_row("scored", f"{result.bp_scored:,} bp ({NO_VALUE})")
    table.add_row("windows", f"{result.n_windows:,} x {result.window} nt (crop {result.crop})")
    shown = result.features if len(result.features) <= 20 else result.features[:20] + [f"... ({len(result.features)})"]
    table.add_row(what, ", ".join(shown))
    if result.out_dir is not None:
        if result.n_segments or what == "features":
            table.add_row("segments", f"{result.n_segments:,}")
        table.add_row("output", str(result.out_dir))
    total = t.get("total", 0.0)
    table.add_row("time", f"{total:.1f} s (model {t.get('model', 0.0):.1f} s), "
                  f"{result.bp_scored / max(total, 1e-9):,.0f} bp/s")
    console.print(table)


def parse_digits(text: str) -> int | None:
    from ..errors import NtkError

    if text.strip().lower() == "full":
        return None
    try:
        d = int(text)
    except ValueError:
        d = -1
    if not 0 <= d <= 9:
        raise NtkError(f"--bedgraph-precision {text!r}: expected 0..9 decimals or 'full'")
    return d


def register(app: typer.Typer) -> None:
    @app.command("segment", help=HELP)
    def segment(
        genome: Annotated[str, typer.Argument(
            metavar="FASTA", help="Genome FASTA (plain, gzip or bgzip); the .fai is built if missing")],
        output: Annotated[Optional[str], typer.Option(
            "--output", "-o", help="Output directory (replaced atomically at the end)")] = None,
        model: ModelOpt = None,
        region: RegionOpt = None,
        regions: RegionsFileOpt = None,
        chr_map: ChrMapOpt = None,
        features: Annotated[Optional[str], typer.Option(
            "--features", help="Features to write, comma-separated (default: all of the model's)")] = None,
        window: Annotated[Optional[int], typer.Option(
            "--window", help="Window in nt: a multiple of 24 for SegmentNT (default: the model's trained length, "
            "30 kb), of 2^num_downsamples for NTv3 (default 1 Mb, 128 for the released models)")] = None,
        crop: Annotated[Optional[int], typer.Option(
            "--crop", help="SegmentNT: half the overlap of neighbouring windows, in nt (default: window/8); NTv3: "
            "fixed by the model (keep_target_center_fraction)")] = None,
        blend: Annotated[str, typer.Option(
            "--blend", help="Join neighbouring windows across their overlap: linear (ramp), cosine (ramp) or "
            "none (cut at the middle); NTv3 windows are always cut")] = "linear",
        rc_average: Annotated[bool, typer.Option(
            "--rc-average", help="Average forward and reverse-complement predictions")] = False,
        threshold: Annotated[float, typer.Option("--threshold", help="Segments: probability at or above this")] = 0.5,
        min_length: Annotated[int, typer.Option("--min-length", help="Segments: shortest one written, in nt")] = 1,
        merge_gap: Annotated[int, typer.Option(
            "--merge-gap", help="Segments: join stretches at most this many nt apart (0: never)")] = DEFAULT_MERGE_GAP,
        bedgraph: Annotated[Optional[str], typer.Option(
            "--bedgraph", metavar="FEATURE", help="Stream FEATURE as bedGraph to stdout (-o may then be omitted)")] = None,
        bedgraph_precision: Annotated[str, typer.Option(
            "--bedgraph-precision", help="bedGraph decimals (0-9), equal rounded neighbours merged; full: exact "
            "float32")] = str(DEFAULT_BEDGRAPH_DIGITS),
        zoom_levels: ZoomLevelsOpt = 10,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = "auto",
        batch_size: BatchSizeOpt = "auto",
        threads: ThreadsOpt = None,
        compile_mode: CompileOpt = "off",
        shard: ShardOpt = None,
        resume: GenomeResumeOpt = False,
        resume_chunk_bp: ResumeChunkBpOpt = None,
        species: SpeciesOpt = None,
        quiet: QuietOpt = False,
        force: ForceOpt = False,
    ):
        from ..errors import NtkError
        from ..pipelines.options import SegmentOptions

        feats = [f.strip() for f in features.split(",") if f.strip()] if features else None
        digits = parse_digits(bedgraph_precision)
        if output is None and bedgraph is None:
            raise NtkError("give an output directory with -o/--output (or --bedgraph FEATURE to stream to stdout)")
        opts = SegmentOptions(
            genome, output, model=model, regions=list(region or ()), regions_file=regions, chr_map=chr_map,
            features=feats, window=window, crop=crop, rc_average=rc_average, blend=blend, threshold=threshold,
            min_length=min_length, merge_gap=merge_gap, bedgraph=bedgraph, bedgraph_digits=digits,
            zoom_levels=zoom_levels, device=device, precision=precision, batch_size=parse_batch_size(batch_size),
            threads=threads,
            compile=compile_mode, force=force, shard=parse_shard(shard), resume=resume, resume_chunk_bp=resume_chunk_bp,
            species=species)
        result = run_genome_job("segment", opts, quiet)
        if result is None:  # a torchrun rank
            return
        summarize("ntk segment", result, quiet, "features")
