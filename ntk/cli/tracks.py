"""`ntk tracks`: an NTv3 post-trained model's functional tracks (BigWig head) over a genome (options ->
pipelines.tracks; the job runner, progress and torchrun handling are segment's)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import (BatchSizeOpt, ChrMapOpt, DeviceOpt, ForceOpt, GenomeResumeOpt, ModelOpt, PrecisionOpt, QuietOpt,
                     RegionOpt, ResumeChunkBpOpt, ZoomLevelsOpt,
                     RegionsFileOpt, ShardOpt, ThreadsOpt, parse_batch_size, parse_shard)
from .segment import SpeciesOpt, run_genome_job, summarize

HELP = """Predict an NTv3 post-trained model's functional tracks (RNA-seq, ATAC, ChIP, ... per species) over a genome.

Writes OUTDIR/<track>.bw (float32 BigWig of the model's softplus output, per nucleotide) for each selected track
of --species, and OUTDIR/run.json (species, track ids, head). Windows, N handling, --shard/ntk merge, --resume
and torchrun work as for ntk segment; N and IUPAC positions get no value.

\b
Examples:
  ntk tracks genome.fa -m ntv3-100m-post --species human \\
    --tracks ids.txt -o tracks/
  ntk tracks genome.fa -m ntv3-100m-post --species human \\
    -r chr1:1-1,000,000 -o tracks/
"""


def register(app: typer.Typer) -> None:
    @app.command("tracks", help=HELP)
    def tracks(
        genome: Annotated[str, typer.Argument(help="Genome FASTA (plain, gzip or bgzip); the .fai is built if missing")],
        output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output directory (written atomically)")] = None,
        model: ModelOpt = None,
        species: SpeciesOpt = None,
        track_ids: Annotated[Optional[str], typer.Option(
            "--tracks", help="Track ids, comma-separated, or a file with one id per line (default: every track of "
            "the species)")] = None,
        region: RegionOpt = None,
        regions: RegionsFileOpt = None,
        chr_map: ChrMapOpt = None,
        window: Annotated[Optional[int], typer.Option(
            "--window", help="Window length in nt, a multiple of 2^num_downsamples (default 1 Mb); the heads "
            "predict on its central keep_target_center_fraction")] = None,
        rc_average: Annotated[bool, typer.Option(
            "--rc-average", help="Average forward and reverse-complement predictions")] = False,
        bedgraph: Annotated[Optional[str], typer.Option(
            "--bedgraph", metavar="TRACK", help="Also stream TRACK as bedGraph to stdout (-o may then be "
            "omitted)")] = None,
        zoom_levels: ZoomLevelsOpt = 10,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = "auto",
        batch_size: BatchSizeOpt = "auto",
        threads: ThreadsOpt = None,
        shard: ShardOpt = None,
        resume: GenomeResumeOpt = False,
        resume_chunk_bp: ResumeChunkBpOpt = None,
        quiet: QuietOpt = False,
        force: ForceOpt = False,
    ):
        from ..errors import NtkError
        from ..pipelines.options import SegmentOptions
        from ..pipelines.tracks import track_ids as parse_track_ids

        if output is None and bedgraph is None:
            raise NtkError("give an output directory with -o/--output (or --bedgraph TRACK to stream to stdout)")
        opts = SegmentOptions(
            genome, output, model=model, species=species, features=parse_track_ids(track_ids), head="bigwig",
            regions=list(region or ()), regions_file=regions, chr_map=chr_map, window=window, rc_average=rc_average,
            bedgraph=bedgraph, zoom_levels=zoom_levels, device=device, precision=precision,
            batch_size=parse_batch_size(batch_size), threads=threads, force=force, shard=parse_shard(shard),
            resume=resume, resume_chunk_bp=resume_chunk_bp)
        result = run_genome_job("tracks", opts, quiet)
        if result is not None:
            summarize("ntk tracks", result, quiet, "tracks")
