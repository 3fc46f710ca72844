"""Process-group setup for data-parallel training: torchrun (DDP over NCCL on GPU, gloo on CPU) and torch-xla.

``torchrun --nproc-per-node N ntk pretrain ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`setup` reads
them, initialises the process group once and picks this rank's device (``cuda:LOCAL_RANK`` on GPU). A plain
``ntk pretrain`` is a world of one and needs no process group. Every helper here works in both cases.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..model.runtime import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: single process
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str = "auto") -> DistInfo:
    """Initialise (once) the process group described by torchrun's environment; resolve this rank's device."""
    world = env_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    name = (device or "auto").lower()
    if world > 1 and name.startswith("cuda") and torch.cuda.is_available():
        name = f"cuda:{local % torch.cuda.device_count()}"  # one GPU per rank whatever cuda:N was asked
    dev = resolve_device(name)
    if world <= 1:
        return DistInfo(device=dev)
    backend = {"cuda": "nccl", "xla": "xla"}.get(dev.type, "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kwargs = {"init_method": "xla://"} if backend == "xla" else {}
        if backend == "xla":
            import torch_xla.distributed.xla_backend  # noqa: F401  (registers the "xla" backend)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, backend=backend,
                    device=dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in a single process)."""
    if not info.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / info.world_size


def broadcast_object(obj, info: DistInfo):
    """Rank 0's Python object on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mark_step(device: torch.device) -> None:
    """Cut the lazy XLA graph (no-op elsewhere): called after every optimiser step and evaluation batch."""
    if device.type == "xla":
        import torch_xla  # type: ignore

        if hasattr(torch_xla, "sync"):
            torch_xla.sync()
        else:  # torch-xla < 2.7
            import torch_xla.core.xla_model as xm  # type: ignore

            xm.mark_step()
