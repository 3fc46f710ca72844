"""`ntk pretrain`: masked-language-model pretraining from FASTA corpora (thin wrapper of ntk.pipelines.pretrain)."""
from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from ..errors import NtkError
from .common import DeviceOpt, ForceOpt, PrecisionOpt, QuietOpt, RegionOpt, RegionsFileOpt, ThreadsOpt, console


def _floats(text: str | None, option: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise NtkError(f"{option} {text!r}: expected comma-separated numbers, e.g. 0.7,0.3") from None


def _names(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(x for x in v.split(",") if x)
    return out


HELP = """Pretrain a Nucleotide Transformer with the masked-LM objective on random windows of FASTA corpora.

Writes RUN_DIR/checkpoints/step-N/ (HF layout + trainer state), RUN_DIR/final/, RUN_DIR/metrics.parquet
and RUN_DIR/training_curves.png. Runs under torchrun --nproc-per-node N as data-parallel DDP.

\b
Examples:
  ntk pretrain genome.fa.gz -o run/ --steps 2000 --val-chroms chrX
  ntk pretrain a.fa b.fa --weights 0.7,0.3 --config nt-v2-50m -o run/
  ntk pretrain genome.fa -o run/ --init-from nt-v2-50m --lr 5e-5
  ntk pretrain genome.fa -o run/ --resume
"""


def print_summary(s: dict, output: str) -> None:
    """The end-of-run lines on stderr: steps, tokens and time; final validation metrics; where the model is."""
    from ..train.distributed import env_world_size

    ev = s.get("last_eval") or {}
    lines = [f"[bold]ntk pretrain[/bold]: {s['step']} steps ({s['stopped']}), {s['tokens_seen']:,.0f} tokens in "
             f"{s['elapsed_s']:.0f} s on {env_world_size()} process(es)"]
    if ev:
        lines.append(f"  validation: loss {ev['val_loss']:.4f} (perplexity {ev['val_perplexity']:.1f}, masked-"
                     f"token accuracy {ev['val_accuracy']:.4f}); context-free unigram baseline "
                     f"{s['unigram_loss']:.4f}")
    where = s["final"] if s["final"] is not None else s["checkpoint"]
    lines.append(f"  model: {where}  (load with ntk.load_model or --model)")
    if s["final"] is None:
        lines.append(f"  continue with: ntk pretrain ... -o {output} --resume")
    console.print("\n".join(lines))


def register(app: typer.Typer) -> None:
    @app.command("pretrain", help=HELP, no_args_is_help=True)
    def pretrain_cmd(
        corpora: Annotated[list[str], typer.Argument(metavar="FASTA", help="Corpus FASTA files (plain, bgzip or "
                                                          "gzip; indexed on first use)", show_default=False)],
        output: Annotated[str, typer.Option("--output", "-o", help="Run directory (checkpoints, metrics, final "
                                                                   "model)", show_default=False)],
        config: Annotated[Optional[str], typer.Option("--config", help="New model: a preset (tiny, small, "
                                                      "nt-v2-50m, ...) or a config.json [default: tiny]")] = None,
        init_from: Annotated[Optional[str], typer.Option("--init-from", help="Continue training this model "
                                                         "(directory or cached preset)")] = None,
        weights: Annotated[Optional[str], typer.Option("--weights", help="Sampling weight per corpus, comma-"
                                                       "separated (default: proportional to corpus size)")] = None,
        region: RegionOpt = None,
        regions: RegionsFileOpt = None,
        val_chroms: Annotated[Optional[list[str]], typer.Option("--val-chroms", help="Contigs held out for "
                                                                "validation (comma-separated, repeatable)")] = None,
        val_regions: Annotated[Optional[str], typer.Option("--val-regions", help="BED of regions held out for "
                                                           "validation")] = None,
        val_frac: Annotated[float, typer.Option("--val-frac", help="Without --val-chroms/--val-regions: hold out "
                                                "this fraction of each corpus (tail of its longest contig); 0 = "
                                                "no validation")] = 0.01,
        val_windows: Annotated[int, typer.Option("--val-windows", help="Validation windows (fixed set)")] = 128,
        seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Tokens per training window incl. <cls> "
                                                       "(window = 6*(seq_len-1) nt) [default: min(model max, "
                                                       "1000)]")] = None,
        max_n_frac: Annotated[float, typer.Option("--max-n-frac", help="Skip windows with a larger fraction of "
                                                  "N")] = 0.05,
        rc_aug: Annotated[bool, typer.Option("--rc-aug/--no-rc-aug", help="Reverse-complement half of the "
                                             "windows")] = False,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the model init, data stream and masking")] = 0,
        steps: Annotated[int, typer.Option("--steps", help="Optimiser steps")] = 10000,
        tokens_per_batch: Annotated[int, typer.Option("--tokens-per-batch", help="Tokens per optimiser step (all "
                                                      "processes; reached by gradient accumulation)")] = 65536,
        batch_size: Annotated[str, typer.Option("--batch-size", help="Sequences per forward pass per process, or "
                                                "auto")] = "auto",
        lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (AdamW) [default: by model "
                                                    "size: 1e-3 up to 5 M parameters, 5e-4 to 30 M, 3e-4 to 150 M, "
                                                    "1e-4 to 600 M, 5e-5 above]")] = None,
        warmup: Annotated[Optional[int], typer.Option("--warmup", help="Linear warm-up steps [default: 5% of "
                                                      "--steps, at most 1000]")] = None,
        schedule: Annotated[str, typer.Option("--schedule", help="cosine | inverse_sqrt | constant")] = "cosine",
        weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.01,
        grad_clip: Annotated[float, typer.Option("--grad-clip", help="Max gradient norm (0 = off)")] = 1.0,
        save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps (0 = at the end "
                                                "only)")] = 1000,
        eval_every: Annotated[int, typer.Option("--eval-every", help="Validation every N steps (0 = start and end "
                                                "only)")] = 500,
        log_every: Annotated[int, typer.Option("--log-every", help="A metrics.parquet row every N steps")] = 1,
        keep_checkpoints: Annotated[int, typer.Option("--keep-checkpoints", help="Newest checkpoints kept (0 = "
                                                      "all)")] = 2,
        stop_after: Annotated[Optional[int], typer.Option("--stop-after", help="Stop after this step with a "
                                                          "checkpoint (the schedule still spans --steps); continue "
                                                          "with --resume")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue the run in -o from its latest "
                                             "checkpoint")] = False,
        force: ForceOpt = False,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = "auto",
        grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", help="Activation checkpointing "
                                                         "(less memory, ~30% more compute)")] = False,
        threads: ThreadsOpt = None,
        quiet: QuietOpt = False,
    ):
        from ..pipelines.pretrain import PretrainOptions, pretrain
        from .common import parse_batch_size, reporter

        opts = PretrainOptions(
            config=config, init_from=init_from, weights=_floats(weights, "--weights"), regions=list(region or []),
            regions_file=regions, val_chroms=_names(val_chroms), val_regions=val_regions, val_frac=val_frac,
            val_windows=val_windows, seq_len=seq_len, max_n_frac=max_n_frac, rc_aug=rc_aug, seed=seed, steps=steps,
            tokens_per_batch=tokens_per_batch, batch_size=parse_batch_size(batch_size), lr=lr, warmup=warmup,
            schedule=schedule, weight_decay=weight_decay, grad_clip=grad_clip, save_every=save_every,
            eval_every=eval_every, log_every=log_every, keep_checkpoints=keep_checkpoints, stop_after=stop_after,
            resume=resume, force=force, device=device, precision=precision, grad_checkpointing=grad_checkpointing,
            threads=threads, quiet=quiet)
        s = pretrain(corpora, output, opts, reporter())  # TrainingInterrupted: one line, exit 128 + signal (cli/main.py)
        if quiet or int(os.environ.get("RANK", "0")) != 0:
            return
        print_summary(s, output)
