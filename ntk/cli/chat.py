"""`ntk chat`: ask ChatNT questions in English about DNA sequences (FASTA records, BED regions, a questions file)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError, NtkError
from .common import (BatchSizeOpt, ChrMapOpt, DeviceOpt, ForceOpt, ModelOpt, PrecisionOpt, RegionOpt, RegionsFileOpt,
                     ShardOpt, ThreadsOpt, console, parse_batch_size, parse_shard)

HELP = (
    "Ask ChatNT a question about DNA sequences, in English.\n\n"
    "The question holds one <DNA> placeholder per sequence. With -f or -r/-R each FASTA record or region gets "
    "its own answer; --questions FILE (TSV with a header, or JSON lines: question plus sequence(s) | region(s) | "
    "record(s), optional name) asks a different question per row, with one or more sequences. Output: "
    "name, question, answer -- TSV on stdout, or -o OUT.tsv / OUT.parquet. With no -q/--questions and a "
    "terminal on stdin, questions are read interactively.\n\n"
    "\b\nExamples:\n"
    "  ntk chat -m chatnt/ -f seqs.fa -q \"Is this sequence a promoter? <DNA>\"\n"
    "  ntk chat -m chatnt/ -R peaks.bed --reference hg38.fa \\\n"
    "    -q \"Is there an enhancer in this sequence <DNA> ?\" -o answers.parquet\n"
    "  ntk chat -m chatnt/ -f seqs.fa --questions questions.tsv -o answers.tsv\n"
)


def register(app: typer.Typer) -> None:
    @app.command("chat", help=HELP, no_args_is_help=True)
    def chat(
        fasta: Annotated[Optional[str], typer.Option("--fasta", "-f", help="FASTA of sequences (plain/gzip; '-' = "
                                                     "stdin); with --questions, the records named in the file")] = None,
        question: Annotated[Optional[str], typer.Option("--question", "-q", help="The question, with <DNA> where "
                                                        "the sequence goes")] = None,
        questions: Annotated[Optional[str], typer.Option("--questions", help="TSV (header: question, sequence(s) | "
                                                         "region(s) | record(s), name) or JSON-lines file of "
                                                         "questions, one prompt per row")] = None,
        reference: Annotated[Optional[str], typer.Option("--reference", help="Indexed genome FASTA for -r/-R and "
                                                         "region columns")] = None,
        region: RegionOpt = None,
        regions: RegionsFileOpt = None,
        chr_map: ChrMapOpt = None,
        output: Annotated[str, typer.Option("--output", "-o", help="'-' (TSV on stdout), OUT.tsv or OUT.parquet")] = "-",
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest answer, in tokens (generation "
                                                    "also stops at </s>)")] = 64,
        temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy (the reference); > 0 samples")
                               ] = 0.0,
        top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (with --temperature > 0)")] = 1.0,
        seed: Annotated[int, typer.Option("--seed", help="Sampling seed (job i uses seed + i)")] = 0,
        raw_prompt: Annotated[bool, typer.Option("--raw-prompt", help="Send the question as the whole prompt, "
                                                 "without the model's chat template")] = False,
        no_cache: Annotated[bool, typer.Option("--no-kv-cache", help="Recompute the whole prompt for every new token, "
                                               "as the reference does (slow; same answers)")] = False,
        model: ModelOpt = None,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = "auto",
        batch_size: BatchSizeOpt = "auto",
        threads: ThreadsOpt = None,
        shard: ShardOpt = None,
        quiet: Annotated[bool, typer.Option("--quiet", help="No summary on stderr")] = False,
        force: ForceOpt = False,
    ):
        from ..io.atomic import check_writable_target
        from ..io.fasta import IndexedFasta, iter_fasta
        from ..io.intervals import iter_regions, read_chr_map
        from ..model import load_model
        from ..model.runtime import set_threads
        from ..pipelines import chat as P

        if not model:
            raise NtkError("give the ChatNT model with -m DIR (a directory written by `ntk models convert chatnt`)")
        if question and questions:
            raise NtkError("give either -q QUESTION or --questions FILE, not both")
        use_regions = bool(region or regions)
        if fasta and use_regions:
            raise NtkError("give sequences either as -f FASTA or as -r/-R regions with --reference, not both")
        interactive = not question and not questions
        if interactive and not sys.stdin.isatty():
            raise NtkError("give a question with -q \"... <DNA> ...\" or a --questions FILE (interactive mode needs a "
                           "terminal on stdin)")
        if interactive and (fasta == "-" or regions == "-"):
            raise NtkError("interactive mode reads questions from the terminal: give the sequences as a file")
        if not questions and not fasta and not use_regions:
            raise NtkError("give the sequences: -f SEQS.fa, or -r/-R regions with --reference GENOME.fa")
        if use_regions and not reference:
            raise NtkError("-r/-R need the genome: --reference GENOME.fa")
        if (reference or chr_map) and not use_regions and not questions:
            raise NtkError("--reference/--chr-map are for -r/-R regions (or region columns of --questions)")
        if sum(x == "-" for x in (fasta, questions, regions)) > 1:
            raise NtkError("stdin can feed only one input")
        shard_ix = parse_shard(shard)
        if shard_ix and "-" in (fasta, questions, regions):
            raise NtkError("--shard reads the whole input first to cut it into blocks: give files, not stdin")
        if output != "-":
            check_writable_target(output, force)
        for label, path in (("FASTA", fasta), ("questions file", questions), ("regions file", regions)):
            if path and path != "-" and not Path(path).is_file():
                raise InputError(f"{path}: {label} not found")

        ref = IndexedFasta(reference) if reference else None
        cmap = read_chr_map(chr_map)

        def region_list():
            return list(iter_regions(region or (), regions, ref.lengths, cmap))

        set_threads(threads)
        m = load_model(model, device=device, dtype=precision)
        bs = parse_batch_size(batch_size) or (8 if m.device.type == "cuda" else 1)
        engine = P.ChatEngine(m, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                              raw_prompt=raw_prompt, use_cache=False if no_cache else None)

        if interactive:
            if use_regions:
                seqs = [P._region_sequence(ref, iv) for iv in region_list()]
            else:
                seqs = [(r.name, r.sequence) for r in iter_fasta(fasta)]
            if not seqs:
                raise InputError("no sequences to ask about")
            P.interactive(engine, seqs, bs, sys.stdin, sys.stdout, sys.stderr)
            return

        if questions:
            jobs = P.question_jobs(questions, records=P.fasta_lookup(fasta) if fasta else None, reference=ref)
        elif use_regions:
            jobs = P.region_jobs(ref, region_list(), question)
        else:
            jobs = P.fasta_jobs(fasta, question)
        if shard_ix is not None:
            jobs = P.take_shard(list(jobs), shard_ix)
        meta = {"ntk_command": "chat", "model": str(model), "max_new_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, "seed": seed, "shard": shard or ""}
        stats = P.write_answers(engine, jobs, output, bs, metadata=meta)
        if stats.jobs == 0:
            console.print("ntk chat: warning: nothing to answer (no records, regions or question rows)")
        if not quiet:
            where = "stdout" if output == "-" else output
            console.print(f"ntk chat: {stats.jobs:,} answers, {stats.new_tokens:,} tokens generated in "
                          f"{stats.batches:,} batches, {stats.seconds:.1f} s ({stats.tokens_per_second:,.1f} tokens/s) "
                          f"-> {where}", soft_wrap=True, markup=False)
