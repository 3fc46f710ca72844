"""`ntk merge`: join the parts of a sharded run (--shard I/N) into one output (options -> pipelines.merge)."""
from __future__ import annotations

from typing import Annotated

import typer

from .common import ForceOpt, QuietOpt, console

HELP = """Merge the parts of a sharded run (--shard I/N) into exactly what one unsharded run writes.

Recognises the output kind from each part's manifest: segment output directories (BigWigs with identical values,
segments.bed.gz + .tbi with calls across shard boundaries joined, run.json), Parquet tables (rows in input order)
and VCFs (one header, records in input order). All N parts of one run must be given, once each, from the same
inputs, model and options; otherwise nothing is written.

\b
Examples:
  ntk merge parts/1 parts/2 parts/3 parts/4 -o hg38_segments
  ntk merge scored.*.vcf.gz -o scored.vcf.gz
  ntk merge emb.1.parquet emb.2.parquet -o emb.parquet
"""


def register(app: typer.Typer) -> None:
    @app.command("merge", help=HELP, no_args_is_help=True)
    def merge(
        parts: Annotated[list[str], typer.Argument(metavar="PART", help="Output directories or files of the --shard I/N runs")],
        output: Annotated[str, typer.Option("--output", "-o", help="Merged output: directory or file (written "
                                            "atomically)")],
        quiet: QuietOpt = False,
        force: ForceOpt = False,
    ):
        from ..pipelines.merge import merge_parts

        r = merge_parts(parts, output, force=force)
        if not quiet:
            what = "positions" if r.fmt == "segment-dir" else "records" if r.fmt == "vcf" else "rows"
            console.print(f"ntk merge: {r.parts} parts of ntk {r.kind} -> {r.output} ({r.rows:,} {what})")
