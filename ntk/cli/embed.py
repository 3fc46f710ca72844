"""`ntk embed`: sequences or genomic regions -> one embedding per record (Parquet, or .npy + row table)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (BatchSizeOpt, ChrMapOpt, CompileOpt, DeviceOpt,
                     ForceOpt, ModelOpt, PrecisionOpt, QuietOpt, RegionOpt,
                     RegionsFileOpt, ShardOpt, ThreadsOpt, console, parse_batch_size, parse_shard)

HELP = (
    "Embed FASTA records, or regions of a reference genome, with a Nucleotide Transformer.\n\n"
    "One row per record/region, in input order: name chrom start end strand length n_tokens status "
    "embedding (list<float32>). Minus-strand BED regions are reverse-complemented. Records longer than the "
    "model context are tiled with overlapping windows and pooled over all their tokens.\n\n"
    "\b\nExamples:\n"
    "  ntk embed seqs.fa -m nt-v2-50m -o emb.parquet\n"
    "  zcat reads.fa.gz | ntk embed - -m nt-v2-50m -o emb.parquet\n"
    "  ntk embed -R promoters.bed --reference genome.fa -m nt-v2-50m -o emb.parquet\n"
    "  ntk embed seqs.fa -m DIR --layer -1 --layer 6 --pool max -o emb.parquet\n"
)


def _progress(quiet: bool, total: int | None):
    """A rich progress bar on stderr, advanced from EmbedStats; returns (context manager, callback)."""
    import contextlib

    from .progress import progress_bar

    if quiet or not console.is_terminal:  # a live bar only on a terminal (no stray lines in logs)
        return contextlib.nullcontext(), None
    prog = progress_bar("embed", "records", console, info=True)
    task = prog.add_task("embed", total=total, info="")

    def update(stats) -> None:
        prog.update(task, completed=stats.records, info=f"{stats.nucleotides:,} nt")

    return prog, update


def register(app: typer.Typer) -> None:
    @app.command("embed", help=HELP, no_args_is_help=True)
    def embed(
        input: Annotated[Optional[str], typer.Argument(
            metavar="FASTA", help="Sequences to embed (plain/gzip/bgzip, - = stdin); with -r/-R: the reference "
            "genome", show_default=False)] = None,
        output: Annotated[Optional[str], typer.Option(
            "--output", "-o", help="Output: .parquet, or .npy with --format npy; - = Parquet on stdout "
            "[required]", show_default=False)] = None,
        reference: Annotated[Optional[str], typer.Option("--reference", help="Reference FASTA for -r/-R regions")] = None,
        region: RegionOpt = None,
        regions: RegionsFileOpt = None,
        chr_map: ChrMapOpt = None,
        layer: Annotated[Optional[list[str]], typer.Option(
            "--layer", help="Hidden state: 0..L (HF indexing; L = after the final layer norm), negative from "
            "the end; default -1. Repeatable: one column per layer. NTv3: default 'final' (the per-base "
            "embedding); 0..L = Transformer outputs")] = None,
        pool: Annotated[str, typer.Option("--pool", help="mean, max, cls, or none (one row per token); CLS and "
                                          "padding never pooled")] = "mean",
        rc_average: Annotated[bool, typer.Option("--rc-average", help="Average with the reverse complement's "
                                                 "embedding")] = False,
        fmt: Annotated[str, typer.Option("--format", help="parquet, or npy (float32 matrix + OUT.rows.tsv)")
                       ] = "parquet",
        model: ModelOpt = None,
        species: Annotated[Optional[str], typer.Option(
            "--species", help="NTv3 post-trained models: the species to condition on")] = None,
        window: Annotated[Optional[int], typer.Option(
            "--window", help="NTv3: window in nt for long records (multiple of 2^num_downsamples; default 1 Mb)")
        ] = None,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = "auto",
        batch_size: BatchSizeOpt = "auto",
        threads: ThreadsOpt = None,
        compile_mode: CompileOpt = "off",
        shard: ShardOpt = None,
        chunk_tokens: Annotated[Optional[int], typer.Option(
            "--chunk-tokens", hidden=True, help="Tokens per scheduling chunk (shards are cut between chunks)")] = None,
        resume: Annotated[bool, typer.Option(
            "--resume", help="Keep finished chunks in .OUT.ntk-partial; rerun the same command after a kill "
            "to embed only the rest")] = False,
        quiet: QuietOpt = False,
        force: ForceOpt = False,
    ):
        from dataclasses import replace

        from ..pipelines.distributed import run_ranks, world_size
        from ..pipelines.embed import check_embed_options, plan_inputs, run_embed
        from ..pipelines.options import EmbedOptions

        opts = EmbedOptions(
            output, input=input, reference=reference, regions=list(region or []), regions_file=regions,
            chr_map=chr_map, model=model, layers=layer, pool=pool, rc_average=rc_average, fmt=fmt, species=species,
            window=window, device=device, precision=precision, batch_size=parse_batch_size(batch_size),
            threads=threads,
            compile=compile_mode, shard=parse_shard(shard), chunk_tokens=chunk_tokens, resume=resume, force=force)
        ranks = world_size() > 1
        check_embed_options(opts, ranks)
        inputs = plan_inputs(opts)
        if ranks:
            return run_ranks(output, force, device, quiet, lambda out, sh, dev, q: run_embed(
                replace(opts, output=out, shard=sh, device=dev), log=None if q else console.print, inputs=inputs))
        if opts.shard is not None:
            stats = run_embed(opts, log=None if quiet else console.print, inputs=inputs)
            if not quiet:
                console.print(f"ntk embed: shard {opts.shard[0]}/{opts.shard[1]}: {stats.records:,} records, "
                              f"{stats.tokens:,} tokens, {stats.seconds:.1f} s -> {output}")
            return
        progress, update = _progress(quiet, inputs.total)
        with progress:
            stats = run_embed(opts, progress=update, inputs=inputs)
        if stats.records == 0:
            console.print("ntk embed: warning: no records to embed (the output has no rows)")
        if not quiet:
            _summary(stats, output)


def _summary(stats, output: str) -> None:
    rate = stats.records / stats.seconds if stats.seconds else 0.0
    skipped = f", empty {stats.empty}, all-N {stats.all_n}" if stats.empty or stats.all_n else ""
    where = "stdout" if output == "-" else str(Path(output))
    if stats.resume is not None:
        console.print(f"ntk embed: --resume: {stats.resume['units_reused']:,} chunks reused, "
                      f"{stats.resume['units_computed']:,} computed")
    console.print(f"ntk embed: {stats.records:,} records (ok {stats.ok:,}{skipped}), {stats.nucleotides:,} nt, "
                  f"{stats.tokens:,} tokens in {stats.windows:,} windows / {stats.batches:,} batches "
                  f"(padding {stats.padding_fraction:.1%}), {stats.rows:,} rows, {stats.seconds:.1f} s "
                  f"({rate:,.1f} records/s) -> {where}", soft_wrap=True)
