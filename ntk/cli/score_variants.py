"""`ntk score-variants`: zero-shot variant effect scores into the VCF (options -> pipelines.score_variants)."""
from __future__ import annotations

import shlex
import sys
from typing import Annotated, Optional

import typer

from .common import (BatchSizeOpt, ChrMapOpt, CompileOpt, DeviceOpt,
                     ForceOpt, ModelOpt, PrecisionOpt, QuietOpt, RegionOpt,
                     RegionsFileOpt, ShardOpt, ThreadsOpt, console, parse_batch_size, parse_shard)

HELP = """Score VCF variants with a Nucleotide Transformer / SegmentNT model (zero-shot).

Every input record is written back, in order, with one Number=A INFO field per score (NTK_COS, NTK_L2, \
NTK_L1, NTK_DOT, NTK_LLR, NTK_SEG_<feature>) and NTK_STATUS (ok, ref_mismatch, symbolic, no_context, \
unsupported). Multi-allelic records are scored per ALT; indels are scored; REF is checked against the FASTA.

\b
Examples:
  ntk score-variants calls.vcf.gz -f genome.fa -m nt-v2-100m -o scored.vcf.gz
  bcftools view -r chr1 calls.bcf \\
    | ntk score-variants - -f genome.fa -m DIR --scores cosine,llr > scored.vcf
  ntk score-variants calls.vcf -f genome.fa -m segment-nt \\
    --table scores.parquet
"""


def register(app: typer.Typer) -> None:
    @app.command("score-variants", help=HELP)
    def score_variants(
        vcf: Annotated[str, typer.Argument(metavar="VCF", help="VCF or BCF (plain or bgzip), or - for stdin")],
        reference: Annotated[str, typer.Option(
            "--reference", "-f", help="Reference FASTA (plain, gzip or bgzip; the .fai is built if missing)")],
        output: Annotated[Optional[str], typer.Option(
            "--output", "-o", help="Annotated VCF: .vcf.gz (bgzip + tabix), .vcf, or - (default: stdout "
            "unless --table)")] = None,
        table: Annotated[Optional[str], typer.Option(
            "--table", help="Parquet table, one row per (record, ALT)")] = None,
        model: ModelOpt = None,
        species: Annotated[Optional[str], typer.Option(
            "--species", help="NTv3 post-trained models: the species to condition on")] = None,
        scores: Annotated[Optional[str], typer.Option(
            "--scores", help="cosine, l2, l1, dot, llr (masked LM), segment (SegmentNT), tracks, elements (NTv3 "
            "post-trained); comma-separated. Default: all the model supports")] = None,
        window: Annotated[Optional[int], typer.Option(
            "--window", help="Window in nt (default: the model's context; a multiple of 24 for SegmentNT; NTv3: "
            "32768, a multiple of 2^num_downsamples, centred on each variant)")] = None,
        rc_average: Annotated[bool, typer.Option(
            "--rc-average", help="Score both strands and average")] = False,
        segment_radius: Annotated[int, typer.Option(
            "--segment-radius", help="segment (and NTv3 tracks/elements) scores: positions within this many nt")] = 500,
        region: RegionOpt = None,
        regions: RegionsFileOpt = None,
        chr_map: ChrMapOpt = None,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = "auto",
        batch_size: BatchSizeOpt = "auto",
        threads: ThreadsOpt = None,
        compile_mode: CompileOpt = "off",
        shard: ShardOpt = None,
        chunk_size: Annotated[int, typer.Option(
            "--chunk-size", hidden=True, help="Records scored together (shards are cut between chunks)")] = 4096,
        resume: Annotated[bool, typer.Option(
            "--resume", help="Keep finished chunks in .OUT.ntk-partial; rerun the same command after a kill "
            "to score only the rest")] = False,
        quiet: QuietOpt = False,
        force: ForceOpt = False,
    ):
        from dataclasses import replace

        from ..errors import NtkError
        from ..pipelines.distributed import run_ranks, world_size
        from ..pipelines.options import ScoreOptions
        from ..pipelines.score_variants import run_score

        if output is None and table is None:
            output = "-"
        opts = ScoreOptions(
            vcf, reference, output=output, table=table, model=model, scores=scores, window=window,
            rc_average=rc_average, segment_radius=segment_radius, regions=list(region or ()), regions_file=regions,
            chr_map=chr_map, device=device, precision=precision, batch_size=parse_batch_size(batch_size),
            threads=threads,
            compile=compile_mode, shard=parse_shard(shard), force=force, progress=not quiet and console.is_terminal,
            command=shlex.join(["ntk"] + sys.argv[1:]), chunk_size=chunk_size, resume=resume, species=species)
        log = None if quiet else console.print

        if world_size() > 1:  # torchrun: this rank scores shard RANK+1/WORLD_SIZE, rank 0 merges
            if shard is not None or (output is not None and table is not None) or output == "-" or vcf == "-":
                raise NtkError("under torchrun give a VCF file and one output file (-o OUT.vcf.gz or --table "
                               "OUT.parquet), without --shard: each rank takes one shard, rank 0 merges")
            field = "output" if output is not None else "table"

            def part(out, sh, dev, q):
                return run_score(replace(opts, **{field: str(out)}, shard=sh, device=dev, force=True,
                                         progress=not q and console.is_terminal), log=None if q else console.print)
            return run_ranks(getattr(opts, field), force, device, quiet, part)
        summary = run_score(opts, log=log)
        if quiet:
            return
        if summary.resume is not None:
            console.print(f"ntk score-variants: --resume: {summary.resume['chunks_reused']:,} chunks reused, "
                          f"{summary.resume['chunks_computed']:,} computed")
        counts = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.status.items(), key=lambda kv: -kv[1]))
        p = summary.passes
        console.print(f"ntk score-variants: {summary.records:,} records, {summary.alleles:,} alleles "
                      f"({counts or 'none'}); {summary.window}-nt windows; forward passes: ref {p['ref']:,}, "
                      f"alt {p['alt']:,}, masked {p['masked']:,}; {summary.seconds:.1f} s "
                      f"({summary.variants_per_second:,.1f} variants/s)", soft_wrap=True)
