"""``ntk plot``: predicted tracks of a segment run against the annotation, as a PNG."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import ForceOpt, console


def register(app: typer.Typer) -> None:
    @app.command("plot")
    def plot(
        segment_dir: Annotated[str, typer.Argument(metavar="SEG_DIR", help="Output directory of ntk segment")],
        region: Annotated[str, typer.Option("--region", "-r", help="chr:start-end, 1-based inclusive")],
        output: Annotated[str, typer.Option("--output", "-o", help="PNG file to write")],
        annotation: Annotated[Optional[str], typer.Option(
            "--annotation", "-a", help="GTF, GFF3 or BED drawn below the tracks")] = None,
        features: Annotated[Optional[str], typer.Option(
            "--features", help="Tracks to draw, comma-separated (default: all)")] = None,
        force: ForceOpt = False,
    ):
        """Draw the per-nucleotide probabilities of a region (one panel per feature) with the annotation below.

        \b
        Examples:
          ntk plot out/ -r I:141601-143800 -a genes.gtf.gz -o gene.png
          ntk plot out/ -r chr1:1,000,001-1,020,000 --features exon,intron -o exons.png
        """
        import pyBigWig

        from ..io.atomic import check_writable_target, refuse_inputs_as_outputs
        from ..io.intervals import parse_region
        from ..pipelines.plot import plot_region

        from pathlib import Path

        refuse_inputs_as_outputs([output], [*Path(segment_dir).glob("*.bw"), annotation])
        check_writable_target(output, force)

        tracks = sorted(Path(segment_dir).glob("*.bw"))
        lengths = {}
        if tracks:
            bw = pyBigWig.open(str(tracks[0]))
            lengths = dict(bw.chroms())
            bw.close()
        iv = parse_region(region, lengths or None)
        out = plot_region(segment_dir, iv, output, annotation=annotation,
                          features=[f for f in features.split(",") if f] if features else None)
        console.print(f"wrote {out}")
