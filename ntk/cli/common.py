"""Options shared by every inference command, and small CLI helpers (logging console, error exit)."""
from __future__ import annotations

from typing import Annotated

import typer

from ..errors import NtkError
from .progress import RichReporter, stderr_console

# logs, progress and summaries go to stderr; data goes to stdout/files
console = stderr_console()


def reporter(quiet: bool = False, bar: bool = True) -> RichReporter:
    """The reporter the CLI hands to pipelines (ntk/report.py): bar and log lines on the stderr console;
    ``quiet``: warnings only."""
    return RichReporter(console, quiet=quiet, bar=bar)

ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Checkpoint directory or preset name (from the local HF cache); default: the "
    "embedded model")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N, xla or mps")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto, fp32, bf16, fp16 or fp8 (auto: bf16 on GPU; on a "
                                            "CPU fp32, or bf16 for segment where the CPU has native bf16; fp8: "
                                            "encoder linears in float8, GPUs of compute capability 8.9+)")]
BatchSizeOpt = Annotated[str, typer.Option("--batch-size", help="Sequences per forward pass, or auto (a token budget)")]
CompileOpt = Annotated[str, typer.Option(
    "--compile", metavar="off|on|cudagraphs", rich_help_panel="Model & device",
    help="torch.compile the model for the full window's batch shape (on; cudagraphs: plus CUDA graphs, CUDA only); "
    "pays on long GPU runs; CPU needs a C++ compiler")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for torch (default: torch's choice)")]
ShardOpt = Annotated[str | None, typer.Option(
    "--shard", help="Run the I-th of N deterministic shards (1-based); join with ntk merge")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary on stderr")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs")]
RegionOpt = Annotated[list[str] | None, typer.Option("--region", "-r", help="chr:start-end, 1-based inclusive; repeatable")]
RegionsFileOpt = Annotated[str | None, typer.Option("--regions", "-R", help="BED file of regions (0-based, half-open)")]
ChrMapOpt = Annotated[str | None, typer.Option("--chr-map", help="Two columns: contig name in the input, name in the FASTA")]
# genome jobs (segment, tracks): BigWig zoom levels and --resume chunks
ZoomLevelsOpt = Annotated[int, typer.Option(
    "--zoom-levels", help="BigWig zoom levels: 32 bp, then 4x coarser each (0: none)")]
GenomeResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Keep finished chunks in .OUTDIR.ntk-partial; rerun the same command after a kill to compute "
    "only the rest")]
ResumeChunkBpOpt = Annotated[int | None, typer.Option(
    "--resume-chunk-bp", hidden=True, help="Positions per --resume chunk (default 4 Mbp)")]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise NtkError(f"--shard {text!r}: expected I/N with integers, e.g. 3/10") from None
    if not (n >= 1 and 1 <= i <= n):
        raise NtkError(f"--shard {text!r}: need 1 <= I <= N")
    return i, n


def parse_batch_size(text: str | int | None) -> int | None:
    if text is None or str(text).lower() == "auto":
        return None
    try:
        b = int(text)
    except ValueError:
        raise NtkError(f"--batch-size {text!r}: expected an integer or 'auto'") from None
    if b < 1:
        raise NtkError("--batch-size must be >= 1")
    return b
