"""AdamW with the usual decay exclusions, and warm-up + decay learning-rate schedules.

Schedules (``lr_factor(step)`` multiplies the peak ``lr``; ``step`` counts optimiser steps from 0):
- ``cosine``: linear warm-up over ``warmup`` steps, then cosine decay towards ``min_lr_ratio * lr`` at ``total``.
- ``inverse_sqrt``: linear warm-up, then ``sqrt(warmup / step)`` (the Nucleotide Transformer recipe).
- ``constant``: linear warm-up, then flat.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

SCHEDULES = ("cosine", "inverse_sqrt", "constant")


def lr_factor(step: int, schedule: str, warmup: int, total: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate for the optimiser step about to run (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup  # the first update already uses a non-zero rate
    if schedule == "constant":
        return 1.0
    if schedule == "inverse_sqrt":
        return math.sqrt(max(warmup, 1) / (step + 1))
    if schedule == "cosine":
        # full rate right after warm-up; the last update (step total-1) still has a non-zero rate
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r} ({', '.join(SCHEDULES)})")


def param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases, LayerNorm weights and embeddings are not decayed."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embeddings" in name or "LayerNorm" in name or "layer_norm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(named_params, lr: float, weight_decay: float, betas=(0.9, 0.98), eps: float = 1e-8,
                    fused: bool = False) -> torch.optim.AdamW:
    groups = param_groups(named_params, weight_decay)
    if not groups:
        raise ValueError("no trainable parameters")
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup: int, total: int,
                    min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r} ({', '.join(SCHEDULES)})")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, schedule, warmup, total, min_lr_ratio))
