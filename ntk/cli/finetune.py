"""`ntk finetune classify|regress|segment` (thin wrappers of ntk.pipelines.finetune / finetune_segment).

`ntk predict` lives in cli/predict.py and is registered from here.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Optional

import typer

from ..errors import NtkError
from .common import (ChrMapOpt, DeviceOpt, ForceOpt, ModelOpt, PrecisionOpt, QuietOpt, RegionsFileOpt, ThreadsOpt, console,
                     reporter)

OutOpt = Annotated[str, typer.Option("--output", "-o", help="Run directory: best/, final/, metrics.json, "
                                     "metrics.parquet, training_curves.png", show_default=False)]
MethodOpt = Annotated[str, typer.Option("--method", help="full (all weights), head (encoder frozen), lora or ia3")]
LoraRankOpt = Annotated[int, typer.Option("--lora-rank", help="LoRA rank r")]
LoraAlphaOpt = Annotated[float, typer.Option("--lora-alpha", help="LoRA scaling alpha (update scaled by alpha/r)")]
LoraDropoutOpt = Annotated[float, typer.Option("--lora-dropout", help="Dropout on the LoRA input")]
LoraTargetsOpt = Annotated[str, typer.Option("--lora-targets", help="Encoder layers given LoRA: query, key, value, "
                                             "attn_out, ffn_in, ffn_out (comma-separated)")]
Ia3TargetsOpt = Annotated[str, typer.Option("--ia3-targets", help="IA3 rescaling: key, value (outputs), ffn_out "
                                            "(its input = the FFN activations), ...")]
MergeOpt = Annotated[bool, typer.Option("--merge", help="Fold LoRA/IA3 adapters into plain weights in best/ and "
                                        "final/")]
EpochsOpt = Annotated[float, typer.Option("--epochs", help="Passes over the training data")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Optimiser steps (overrides --epochs)")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Sequences (windows) per step")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate [default: full 1e-4, head 1e-3, "
                                                "lora 1e-3, ia3 3e-3]")]
WarmupOpt = Annotated[float, typer.Option("--warmup", help="Warm-up: a fraction of the steps (<1) or steps (>=1)")]
WdOpt = Annotated[float, typer.Option("--weight-decay")]
EvalEveryOpt = Annotated[Optional[int], typer.Option("--eval-every", help="Validate every N steps [default: each "
                                                     "epoch]")]
PatienceOpt = Annotated[Optional[int], typer.Option("--patience", help="Stop after N evaluations without "
                                                    "improvement (0 = never)")]
MonitorOpt = Annotated[Optional[str], typer.Option("--monitor", help="Validation metric for early stopping and "
                                                   "best/: mcc, auroc, auprc, f1, accuracy, pearson, spearman, r2, "
                                                   "mse, loss, or metric/NAME [default: classify mcc, regress "
                                                   "pearson, segment auprc]")]
# classify/regress: defaults chosen by measurement (README, `ntk finetune`; bench/RESULTS.md)
SeqEpochsOpt = Annotated[Optional[float], typer.Option("--epochs", help="Passes over the training data [default: 5,000 "
                                                       "sequences' worth, 3 to 10 epochs]")]
SeqLrOpt = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate [default: full: by model size "
                                                   "(1e-3 up to 5 M parameters ... 1e-4 from 150 M), head and lora "
                                                   "3e-3, ia3 1e-2]")]
SeqEvalEveryOpt = Annotated[Optional[int], typer.Option("--eval-every", help="Validate every N steps [default: twice "
                                                        "per epoch]")]
SeqPatienceOpt = Annotated[Optional[int], typer.Option("--patience", help="Stop after N evaluations without "
                                                       "improvement (0 = never) [default: a third of the run's "
                                                       "evaluations, at least 2]")]
SeqMonitorOpt = Annotated[Optional[str], typer.Option("--monitor", help="Validation metric for early stopping and "
                                                      "best/: loss, mcc, auroc, auprc, f1, accuracy, pearson, "
                                                      "spearman, r2, mse, or metric/NAME [default: loss]")]
BaselineOpt = Annotated[str, typer.Option("--baseline", help="kmer: fit a logistic (ridge) regression on 1-6-mer "
                                          "frequencies on the same split and report it next to the model; none; "
                                          "auto: kmer up to 20,000 records")]
ShiftAugmentOpt = Annotated[int, typer.Option("--shift-augment", help="Drop 0..N leading nucleotides of a training "
                                              "sequence each time it is drawn, so every 6-mer tokenisation frame "
                                              "is seen (0 = off)")]
FtSpeciesOpt = Annotated[Optional[str], typer.Option("--species", help="NTv3 post-trained base: the species the "
                                                     "model is conditioned on (required for such a base; kept in "
                                                     "the checkpoint, so `ntk predict` uses it)")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the head init, split, shuffling and augmentation")]
SaveEveryOpt = Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps (0 = at the end)")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in -o from its latest checkpoint")]
RefOpt = Annotated[Optional[str], typer.Option("--reference", "-f", help="Reference FASTA (for -R regions)")]
LabelColOpt = Annotated[Optional[list[str]], typer.Option("--label-col", help="Label column(s), comma-separated or "
                                                          "repeated; for BED input a 1-based column number, 'name' "
                                                          "or 'score' [default: label / BED name]")]
SeqColOpt = Annotated[str, typer.Option("--sequence-col", help="Sequence column of a table")]
NameColOpt = Annotated[Optional[str], typer.Option("--name-col", help="Record name column of a table")]
SplitColOpt = Annotated[Optional[str], typer.Option("--split-col", help="Column with train/val/test per record")]
ValChromsOpt = Annotated[Optional[list[str]], typer.Option("--val-chroms", help="Chromosomes held out for "
                                                           "validation (comma-separated, repeatable)")]
TestChromsOpt = Annotated[Optional[list[str]], typer.Option("--test-chroms", help="Chromosomes held out for "
                                                            "testing")]
ValFracOpt = Annotated[float, typer.Option("--val-fraction", help="Stratified random validation fraction (tables)")]
TestFracOpt = Annotated[float, typer.Option("--test-fraction", help="Stratified random test fraction (tables)")]
FoldsOpt = Annotated[Optional[int], typer.Option("--folds", help="K-fold cross-validation (tables): RUN_DIR/fold-K "
                                                 "per fold, mean/sd of test metrics in RUN_DIR/metrics.json")]
MultiLabelOpt = Annotated[bool, typer.Option("--multi-label", help="classify: several 0/1 label columns, or one "
                                              "column of labels joined by ';'")]
ClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="classify: class names in order, "
                                                   "comma-separated (other values are an error)")]
InputArg = Annotated[Optional[str], typer.Argument(metavar="INPUT", help="Table (.csv/.tsv/.parquet with "
                                                   "sequence and label columns) or FASTA with labels in the "
                                                   "headers (>id label=X)", show_default=False)]
# segment
SegRefOpt = Annotated[str, typer.Option("--reference", "-f", help="Genome FASTA (plain/bgzip/gzip)", show_default=False)]
AnnotationOpt = Annotated[str, typer.Option("--annotation", "-a", help="GTF, GFF3 or BED (name column = feature)",
                                            show_default=False)]
FeaturesOpt = Annotated[str, typer.Option("--features", help="Features to learn, comma-separated: exon, intron, "
                                          "splice_donor, splice_acceptor, 5UTR, 3UTR, protein_coding_gene, lncRNA, "
                                          "<biotype>_gene or a record type", show_default=False)]
TrainChromsOpt = Annotated[Optional[list[str]], typer.Option("--train-chroms", help="Training contigs [default: every "
                                                             "other annotated contig]")]
AnnotationFormatOpt = Annotated[Optional[str], typer.Option("--annotation-format", help="gtf | gff3 | bed [default: "
                                                            "from the file name]")]
WindowOpt = Annotated[Optional[int], typer.Option("--window", help="Window in nt, a multiple of 24 (NTv3: of "
                                                  "2^num_downsamples) [default: the model's context, at most 6144; "
                                                  "NTv3: 8192]")]
EvalCropOpt = Annotated[Optional[int], typer.Option("--eval-crop", help="nt ignored at each end of evaluation windows "
                                                    "[default: window/8; NTv3 post-trained base: its own centre]")]
MaxEvalWindowsOpt = Annotated[int, typer.Option("--max-eval-windows", help="Validation windows, evenly spaced (0 = "
                                                "all); test always uses all")]
RcAugmentOpt = Annotated[bool, typer.Option("--rc-augment/--no-rc-augment", help="Reverse-complement half of the "
                                            "training windows")]
PosWeightOpt = Annotated[str, typer.Option("--pos-weight", help="Weight of positive nucleotides in the loss: none, auto "
                                           "(sqrt(neg/pos) per feature, 1..100) or a number")]
NucHeadOpt = Annotated[Optional[int], typer.Option("--nucleotide-head", help="Add ntk's nucleotide-resolution head "
                                                   "with this many channels (dilated convolutions over the bases "
                                                   "and the U-Net features; 0 = none) [default: the base's, else "
                                                   "none]")]


def _names(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


def _options(params: dict):
    """The FinetuneOptions of a command, from its parameters (``locals()``): the CLI names its options as the
    fields of FinetuneOptions, one to one; the parameters that are no field (input, splits, ...) are left out."""
    from ..pipelines.finetune import FinetuneOptions

    names = {f.name for f in fields(FinetuneOptions)}
    return FinetuneOptions(**{k: v for k, v in params.items() if k in names})  # patience None: by the run's length


def _fmt(d: dict | None, keys=None) -> str:
    if not d:
        return "-"
    items = [(k, v) for k, v in d.items() if (keys is None or k in keys) and v is not None]
    return "  ".join(f"{k} {v:.3f}" for k, v in items)


def _summary(name: str, rep: dict, output: str) -> None:
    if "folds" in rep:
        console.print(f"[bold]ntk finetune {name}[/bold]: {rep['folds']} folds; test mean: {_fmt(rep['test_mean'])}")
        console.print(f"  per-fold runs in {output}/fold-K, summary in {output}/metrics.json")
        return
    main = ("mcc", "auroc", "auprc", "accuracy", "f1", "pearson", "spearman", "r2", "loss")
    console.print(f"[bold]ntk finetune {name}[/bold]: {rep['steps']} steps ({rep['stopped']}), best "
                  f"{rep['monitor']} {rep['best_value'] if rep['best_value'] is None else round(rep['best_value'], 4)}"
                  f" at step {rep['best_step']}; {rep['trainable_parameters']:,} of {rep['total_parameters']:,} "
                  "parameters trained")
    console.print(f"  validation (best/): {_fmt(rep.get('val'), main)}")
    if rep.get("test"):
        console.print(f"  test (best/):       {_fmt(rep['test'], main)}")
        if rep.get("initial_test"):
            console.print(f"  test, untrained head: {_fmt(rep['initial_test'], main)}")
    base = rep.get("baseline")
    if base:
        which = "test" if base.get("test") else "val"
        console.print(f"  {which}, k-mer baseline ({base['features']}, logistic/ridge): {_fmt(base.get(which), main)}")
        key = rep["monitor"][4:]
        mine, theirs = (rep.get(which) or {}).get(key), (base.get(which) or {}).get(key)
        if mine is not None and theirs is not None:
            lower = key.split("/")[0] in ("loss", "mse")
            if (mine >= theirs) if lower else (mine <= theirs):
                console.print(f"  [yellow]the model does not beat the k-mer baseline on {which} {key}[/yellow]")
    if rep.get("best_is_untrained"):
        console.print("  [bold yellow]best/ is the untrained head: no evaluation improved on it[/bold yellow]")
    console.print(f"  model: {rep.get('best_checkpoint')}  metrics: {output}/metrics.json")


ft = typer.Typer(help="Fine-tune a model: sequence classification, regression, or per-nucleotide segmentation "
                 "(SegmentNT-style head); full, head-only, LoRA or IA3.", no_args_is_help=True)

CLASSIFY_HELP = (
    "Train a sequence classifier (single-label, or --multi-label) on a table, a labelled FASTA, or BED "
    "intervals of a reference.\n\n"
    "Splits: stratified random (--val-fraction, --test-fraction), --folds K, --split-col, or whole "
    "chromosomes (--val-chroms) for BED input.\n\n"
    "\b\nExamples:\n"
    "  ntk finetune classify promoters.csv -m nt-v2-50m -o runs/prom \\\n"
    "    --method lora --merge\n"
    "  ntk finetune classify seqs.fa -m nt-v2-100m -o runs/cv \\\n"
    "    --folds 10 --method ia3\n"
    "  ntk finetune classify -R sites.bed -f genome.fa --label-col 5 \\\n"
    "    --val-chroms chr8 --test-chroms chr9,chr10 -o runs/s\n")
REGRESS_HELP = (
    "Train a regressor for one or more numeric targets (--label-col a,b).\n\n"
    "Predictions are in the targets' units; metrics Pearson, Spearman, R2, MSE.\n\n"
    "\b\nExamples:\n"
    "  ntk finetune regress expr.tsv --label-col log_tpm,halflife -m nt-v2-50m \\\n"
    "    -o runs/expr\n"
    "  ntk finetune regress expr.parquet --label-col a,b --folds 5 -o runs/cv\n")


def register(app: typer.Typer) -> None:
    from .predict import register as register_predict

    app.add_typer(ft, name="finetune")
    register_predict(app)


@ft.command("regress", no_args_is_help=True, help=REGRESS_HELP)
@ft.command("classify", no_args_is_help=True, help=CLASSIFY_HELP)
def sequence_cmd(
    ctx: typer.Context,
    output: OutOpt,
    input: InputArg = None,
    model: ModelOpt = None,
    regions: RegionsFileOpt = None,
    reference: RefOpt = None,
    chr_map: ChrMapOpt = None,
    label_col: LabelColOpt = None,
    sequence_col: SeqColOpt = "sequence",
    name_col: NameColOpt = None,
    multi_label: MultiLabelOpt = False,
    classes: ClassesOpt = None,
    split_col: SplitColOpt = None,
    val_chroms: ValChromsOpt = None,
    test_chroms: TestChromsOpt = None,
    val_fraction: ValFracOpt = 0.1,
    test_fraction: TestFracOpt = 0.1,
    folds: FoldsOpt = None,
    method: MethodOpt = "full",
    lora_rank: LoraRankOpt = 8,
    lora_alpha: LoraAlphaOpt = 16.0,
    lora_dropout: LoraDropoutOpt = 0.0,
    lora_targets: LoraTargetsOpt = "query,value",
    ia3_targets: Ia3TargetsOpt = "key,value,ffn_out",
    merge: MergeOpt = False,
    epochs: SeqEpochsOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = 16,
    lr: SeqLrOpt = None,
    warmup: WarmupOpt = 0.05,
    weight_decay: WdOpt = 0.01,
    eval_every: SeqEvalEveryOpt = None,
    patience: SeqPatienceOpt = None,
    monitor: SeqMonitorOpt = None,
    baseline: BaselineOpt = "auto",
    shift_augment: ShiftAugmentOpt = 5,
    species: FtSpeciesOpt = None,
    seed: SeedOpt = 0,
    save_every: SaveEveryOpt = 0,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
):
    """`ntk finetune classify` and `ntk finetune regress` (the command name picks the task)."""
    opts = _options(locals())
    from ..io.intervals import read_chr_map
    from ..pipelines.finetune import SequenceTaskInput, finetune_sequences

    task = ctx.info_name
    if task == "regress" and (multi_label or classes):
        raise NtkError("--multi-label/--classes apply to `ntk finetune classify`")
    inp = SequenceTaskInput(
        path=input, label_cols=_names(label_col) or ["label"], sequence_col=sequence_col, name_col=name_col,
        regions=regions, reference=reference, chr_map=read_chr_map(chr_map), multi_label=multi_label,
        classes=_names([classes]) if classes else None, split_col=split_col,
        val_chroms=_names(val_chroms), test_chroms=_names(test_chroms), val_fraction=val_fraction,
        test_fraction=test_fraction, folds=folds)
    rep = finetune_sequences(task, inp, output, opts, reporter())
    if not quiet:
        _summary(task, rep, output)


@ft.command("segment", no_args_is_help=True)
def segment_cmd(
    output: OutOpt,
    reference: SegRefOpt,
    annotation: AnnotationOpt,
    features: FeaturesOpt,
    val_chroms: ValChromsOpt = None,
    test_chroms: TestChromsOpt = None,
    train_chroms: TrainChromsOpt = None,
    chr_map: ChrMapOpt = None,
    annotation_format: AnnotationFormatOpt = None,
    window: WindowOpt = None,
    eval_crop: EvalCropOpt = None,
    max_eval_windows: MaxEvalWindowsOpt = 256,
    rc_augment: RcAugmentOpt = True,
    pos_weight: PosWeightOpt = "none",
    nucleotide_head: NucHeadOpt = None,
    model: ModelOpt = None,
    species: FtSpeciesOpt = None,
    method: MethodOpt = "full",
    lora_rank: LoraRankOpt = 8,
    lora_alpha: LoraAlphaOpt = 16.0,
    lora_dropout: LoraDropoutOpt = 0.0,
    lora_targets: LoraTargetsOpt = "query,value",
    ia3_targets: Ia3TargetsOpt = "key,value,ffn_out",
    merge: MergeOpt = False,
    epochs: EpochsOpt = 10.0,
    steps: StepsOpt = None,
    batch_size: BatchOpt = 8,
    lr: LrOpt = None,
    warmup: WarmupOpt = 0.05,
    weight_decay: WdOpt = 0.01,
    eval_every: EvalEveryOpt = None,
    patience: PatienceOpt = 5,
    monitor: MonitorOpt = None,
    seed: SeedOpt = 0,
    save_every: SaveEveryOpt = 0,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
):
    """Train a SegmentNT-style U-Net head on per-nucleotide targets from an annotation.

    The result (RUN_DIR/best/) is a SegmentNT-type checkpoint that ntk segment runs. With an NTv3 base
    (pre-trained, or post-trained with --species) the head is a per-base one on the final per-base
    embedding and the result is an NTv3 checkpoint that ntk segment runs.

    \b
    Examples:
      ntk finetune segment -f genome.fa -a genes.gtf.gz \\
        --features protein_coding_gene,exon,intron,splice_donor \\
        --val-chroms III --test-chroms VI -m nt-v2-50m -o runs/seg
      ntk finetune segment -f hg38.fa -a gencode.gtf.gz -m segment-nt \\
        --features exon,5UTR --val-chroms chr8 --method lora -o runs/utr
      ntk finetune segment -f hg38.fa -a gencode.gtf.gz -m ntv3-100m-post \\
        --species human --features exon,intron --val-chroms chr8 -o runs/v3
    """
    opts = _options(locals())
    from ..io.intervals import read_chr_map
    from ..pipelines.finetune_segment import SegmentTaskInput, finetune_segment

    inp = SegmentTaskInput(
        reference=reference, annotation=annotation, features=_names([features]), val_chroms=_names(val_chroms),
        test_chroms=_names(test_chroms), train_chroms=_names(train_chroms) or None,
        chr_map=read_chr_map(chr_map), annotation_format=annotation_format, window=window, eval_crop=eval_crop,
        max_eval_windows=max_eval_windows or None, rc_augment=rc_augment, pos_weight=pos_weight,
        nucleotide_head=nucleotide_head)
    rep = finetune_segment(inp, output, opts, reporter())
    if not quiet:
        _summary("segment", rep, output)
