"""Inference under torchrun: one rank per GPU (or CPU process), each running one shard; rank 0 merges.

``torchrun --nproc-per-node G --no-python ntk segment GENOME -o OUT ...`` (also ``embed`` and
``score-variants``): rank R (0-based) of a world of W runs shard ``R+1/W`` on ``cuda:LOCAL_RANK`` (or the CPU)
into a hidden part under ``.OUT.ntk-ranks/``; once every rank is done, rank 0 joins the parts with
``ntk merge`` into ``OUT`` (exactly what one process writes) and removes them. Only rank 0 shows progress.
If any rank fails, every rank exits with an error and ``OUT`` is not written. The ranks only exchange their
status (a gloo process group, also on GPU: inference needs no gradient exchange), so the ranks wait for each
other without a collective timeout that a long shard could exceed.

Process-group setup and device choice reuse ``ntk/train/distributed.py``.
"""
from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from ..errors import NtkError
from ..train.distributed import env_world_size, setup, teardown

WAIT = datetime.timedelta(days=7)  # ranks that finish early wait this long for the slowest one


def world_size() -> int:
    """Ranks started by torchrun (1 outside torchrun)."""
    return env_world_size()


def ranks_dir(output: str | os.PathLike) -> Path:
    p = Path(output)
    return p.parent / f".{p.name}.ntk-ranks"


def run_ranks(output: str | os.PathLike, force: bool, device: str, quiet: bool,
              run_part: Callable[[Path, tuple[int, int], str, bool], object]) -> None:
    """Run this rank's shard with ``run_part(part_path, (I, N), device, quiet)``, then (rank 0) merge all parts
    into ``output``."""
    from ..pipelines.merge import merge_parts

    out = Path(output)
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise NtkError(f"{out}: already exists (use --force to overwrite)")
    name = (device or "auto").lower()
    if name == "auto" and torch.cuda.is_available():
        name = "cuda"  # setup() maps it to cuda:LOCAL_RANK
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=WAIT)
    info = setup(name)
    n, r = info.world_size, info.rank
    parts = [ranks_dir(out) / f"{k}of{n}" / out.name for k in range(1, n + 1)]
    error: str | None = None
    failure: BaseException | None = None
    try:
        parts[r].parent.mkdir(parents=True, exist_ok=True)
        run_part(parts[r], (r + 1, n), str(info.device), quiet or not info.is_main)
    except Exception as e:  # reported to every rank, re-raised here
        error, failure = f"rank {r}: {e}", e
    try:
        statuses: list = [None] * n
        dist.all_gather_object(statuses, error)
        if failure is not None:
            raise failure
        failed = [s for s in statuses if s]
        if failed:
            raise NtkError(f"another rank failed ({failed[0]}); {out} was not written")
        if info.is_main:
            merge_parts(parts, out, force=force)
            shutil.rmtree(ranks_dir(out), ignore_errors=True)
        dist.barrier()
    finally:
        teardown()
