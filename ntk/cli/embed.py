"""`ntk embed`: sequences or genomic regions -> one embedding per record (Parquet, or .npy + row table)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError, NtkError
from .common import (BatchSizeOpt, ChrMapOpt, DeviceOpt, ForceOpt, ModelOpt, PrecisionOpt, QuietOpt, RegionOpt,
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
        shard: ShardOpt = None,
        chunk_tokens: Annotated[Optional[int], typer.Option(
            "--chunk-tokens", hidden=True, help="Tokens per scheduling chunk (shards are cut between chunks)")] = None,
        resume: Annotated[bool, typer.Option(
            "--resume", help="Keep finished chunks in .OUT.ntk-partial; rerun the same command after a kill "
            "to embed only the rest")] = False,
        quiet: QuietOpt = False,
        force: ForceOpt = False,
    ):
        from ..io.atomic import check_writable_target, refuse_inputs_as_outputs
        from ..io.fasta import IndexedFasta
        from ..io.intervals import iter_regions, load_regions, read_bed, read_chr_map
        from ..model import load_model
        from ..model.checkpoint import check_window_before_loading
        from ..model.runtime import set_threads
        from ..pipelines.embed import (FORMATS, POOLINGS, Embedder, embed_shard, fasta_inputs, npy_rows_path,
                                       region_inputs, write_embeddings)

        if pool not in POOLINGS:
            raise NtkError(f"--pool {pool!r}: expected one of {', '.join(POOLINGS)}")
        if fmt not in FORMATS:
            raise NtkError(f"--format {fmt!r}: expected parquet or npy")
        if rc_average and pool == "none":
            raise NtkError("--rc-average needs a pooled embedding: use --pool mean|max|cls")
        if not output:
            raise NtkError("give the output file with -o OUT.parquet (or -o OUT.npy --format npy)")
        from ..pipelines.distributed import run_ranks, world_size

        bs = parse_batch_size(batch_size)
        use_regions = bool(region or regions)
        shard_ix = parse_shard(shard)
        ranks = world_size() > 1
        if resume and (output == "-" or input == "-" or regions == "-"):
            raise NtkError("--resume reads the same input again and keeps finished chunks beside the output: give "
                           "files (not stdin/stdout)")
        if shard_ix is not None or ranks:
            if shard_ix is not None and ranks:
                raise NtkError("under torchrun each rank takes one shard: leave out --shard")
            if fmt != "parquet" or output == "-":
                raise NtkError("--shard/torchrun write Parquet parts to a file: give -o OUT.parquet")
            if input == "-" or regions == "-":
                raise NtkError("--shard/torchrun read the input twice (to cut balanced shards): give a file, "
                               "not stdin")

        # outputs: refuse early, before any work
        if output == "-":
            if fmt == "npy":
                raise NtkError("--format npy writes a file: give -o OUT.npy")
            if sys.stdout.isatty():
                raise NtkError("-o -: Parquet is binary; redirect stdout to a file or give -o FILE")
        else:
            refuse_inputs_as_outputs([output, npy_rows_path(output) if fmt == "npy" else None],
                                     [input, reference, regions, chr_map])
            check_writable_target(output, force)
            if fmt == "npy":
                check_writable_target(npy_rows_path(output), force)

        # inputs
        total = None
        if use_regions:
            if input and reference and input != reference:
                raise NtkError("with -r/-R give the reference genome once: as INPUT or with --reference")
            ref = reference or input
            if not ref:
                raise NtkError("-r/-R need the reference genome: --reference GENOME.fa")
            if regions == "-" and ref == "-":
                raise NtkError("stdin can feed only one input")
            fasta = IndexedFasta(ref)
            cmap = read_chr_map(chr_map)
            intervals = load_regions(region or (), None, fasta.lengths)  # a bad -r fails here
            if regions and regions != "-":
                total = sum(1 for _ in read_bed(regions, fasta.lengths, cmap))  # validate every line up front
            if total is not None:
                total += len(intervals)

            def make_records():
                return region_inputs(fasta, iter_regions(region or (), regions, fasta.lengths, cmap))

            records = make_records()
            source = {"reference": ref, "regions_file": regions, "chr_map": chr_map}
        else:
            if reference or chr_map:
                raise NtkError("--reference/--chr-map are for -r/-R regions; to embed FASTA records give the "
                               "FASTA as INPUT")
            if not input:
                raise NtkError("give a FASTA to embed (or '-' for stdin), or regions with -r/-R --reference")
            if input != "-" and not Path(input).is_file():
                raise InputError(f"{input}: FASTA file not found")
            if input != "-" and not os.access(input, os.R_OK):
                raise InputError(f"{input}: FASTA file is not readable (permission denied)")
            records = fasta_inputs(input)

            def make_records():
                return fasta_inputs(input)
            source = {"input": input}

        check_window_before_loading(model, window, "embed")  # from config.json, before the weights load
        set_threads(threads)
        options = {"layers": layer, "pool": pool, "rc_average": rc_average, "regions": region or None,
                   "species": species, "window": window}

        def run_shard(out, sh: tuple[int, int], dev: str, q: bool):
            m = load_model(model, device=dev, dtype=precision)
            return embed_shard(m, make_records, out, sh, source, options, bs, model or getattr(m, "source", ""),
                               None if q else console.print, chunk_tokens=chunk_tokens,
                               resume={} if resume else None)

        if ranks:
            return run_ranks(output, force, device, quiet, run_shard)
        if shard_ix is not None:
            stats = run_shard(output, shard_ix, device, quiet)
            if not quiet:
                console.print(f"ntk embed: shard {shard_ix[0]}/{shard_ix[1]}: {stats.records:,} records, "
                              f"{stats.tokens:,} tokens, {stats.seconds:.1f} s -> {output}")
            return
        m = load_model(model, device=device, dtype=precision)
        Embedder(m, layers=layer, pool=pool, species=species, window=window)  # fail before any output starts
        label = model or getattr(m, "source", "")
        progress, update = _progress(quiet, total)
        journal = {"sources": source, "options": {"regions": region or None}} if resume else None
        with progress:
            stats = write_embeddings(m, records, output, fmt=fmt, model_label=label, progress=update,
                                     layers=layer, pool=pool, rc_average=rc_average, batch_size=bs,
                                     chunk_tokens=chunk_tokens, resume=journal, species=species, window=window)
        if stats.records == 0:
            console.print("ntk embed: warning: no records to embed (the output has no rows)")
        if not quiet:
            rate = stats.records / stats.seconds if stats.seconds else 0.0
            skipped = f", empty {stats.empty}, all-N {stats.all_n}" if stats.empty or stats.all_n else ""
            where = "stdout" if output == "-" else str(Path(output))
            if journal is not None:
                info = journal["info"]
                console.print(f"ntk embed: --resume: {info['units_reused']:,} chunks reused, "
                              f"{info['units_computed']:,} computed")
            console.print(f"ntk embed: {stats.records:,} records (ok {stats.ok:,}{skipped}), {stats.nucleotides:,} nt, "
                          f"{stats.tokens:,} tokens in {stats.windows:,} windows / {stats.batches:,} batches "
                          f"(padding {stats.padding_fraction:.1%}), {stats.rows:,} rows, {stats.seconds:.1f} s "
                          f"({rate:,.1f} records/s) -> {where}", soft_wrap=True)
