"""`ntk predict`: apply a fine-tuned classifier/regressor to new sequences (thin wrapper of ntk.pipelines.predict)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import BatchSizeOpt, ChrMapOpt, DeviceOpt, ForceOpt, PrecisionOpt, QuietOpt, RegionsFileOpt, ThreadsOpt
from .common import console, parse_batch_size


def register(app: typer.Typer) -> None:
    @app.command("predict", no_args_is_help=True)
    def predict_cmd(
        model: Annotated[str, typer.Argument(metavar="MODEL", help="Run directory of ntk finetune (uses best/) or a "
                                             "checkpoint directory", show_default=False)],
        input: Annotated[Optional[str], typer.Argument(metavar="INPUT", help="FASTA (- = stdin), or a .csv/.tsv/.parquet "
                                                       "table with a sequence column", show_default=False)] = None,
        output: Annotated[str, typer.Option("--output", "-o", help="Parquet output (- = stdout)")] = "-",
        regions: RegionsFileOpt = None,
        reference: Annotated[Optional[str], typer.Option("--reference", "-f", help="Reference FASTA for -R regions")] = None,
        chr_map: ChrMapOpt = None,
        sequence_col: Annotated[str, typer.Option("--sequence-col", help="Sequence column of a table")] = "sequence",
        name_col: Annotated[Optional[str], typer.Option("--name-col", help="Name column of a table")] = None,
        threshold: Annotated[float, typer.Option("--threshold", help="Multi-label: pred_<label> is prob >= "
                                                 "this")] = 0.5,
        batch_size: BatchSizeOpt = "32",
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = "auto",
        threads: ThreadsOpt = None,
        force: ForceOpt = False,
        quiet: QuietOpt = False,
    ):
        """Predict labels or values of new sequences with a model from ntk finetune classify or regress.

        One Parquet row per record: name, length, then pred_label + prob_<class> (classification), prob_<label> +
        pred_<label> (multi-label) or pred_<target> (regression).

        \b
        Examples:
          ntk predict runs/prom new.fa -o predictions.parquet
          ntk predict runs/prom -R peaks.bed -f genome.fa -o pred.parquet
          ntk predict runs/expr table.tsv --sequence-col seq -o - > pred.parquet
        """
        from ..io.intervals import read_chr_map
        from ..pipelines.predict import PredictOptions, predict

        opts = PredictOptions(sequence_col=sequence_col, name_col=name_col, regions=regions, reference=reference,
                              chr_map=read_chr_map(chr_map), batch_size=parse_batch_size(batch_size) or 32,
                              threshold=threshold, device=device, precision=precision, threads=threads, force=force,
                              quiet=True)
        res = predict(model, input, output, opts)
        if not quiet and output != "-":
            console.print(f"[bold]ntk predict[/bold]: {res['records']:,} records -> {output} "
                          f"(model {res['checkpoint']})")
