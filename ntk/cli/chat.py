"""`ntk chat`: ask ChatNT questions in English about DNA sequences (FASTA records, BED regions, a questions file)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

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
        from ..pipelines.chat import ChatOptions, run_chat

        opts = ChatOptions(
            model=model, fasta=fasta, question=question, questions=questions, reference=reference,
            regions=list(region or []), regions_file=regions, chr_map=chr_map, output=output,
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, raw_prompt=raw_prompt,
            use_cache=False if no_cache else None, device=device, precision=precision,
            batch_size=parse_batch_size(batch_size), threads=threads, shard=parse_shard(shard), force=force)
        stats = run_chat(opts)
        if stats is None:  # interactive
            return
        if stats.jobs == 0:
            console.print("ntk chat: warning: nothing to answer (no records, regions or question rows)")
        if not quiet:
            where = "stdout" if output == "-" else output
            console.print(f"ntk chat: {stats.jobs:,} answers, {stats.new_tokens:,} tokens generated in "
                          f"{stats.batches:,} batches, {stats.seconds:.1f} s ({stats.tokens_per_second:,.1f} tokens/s) "
                          f"-> {where}", soft_wrap=True, markup=False)
