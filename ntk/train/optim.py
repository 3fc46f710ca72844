"""AdamW with the usual decay exclusions, and warm-up + decay learning-rate schedules.

Schedules (``lr_factor(step)`` multiplies the peak ``lr``; ``step`` counts optimiser steps from 0):
- ``cosine``: linear warm-up over ``warmup`` steps, then cosine decay towards ``min_lr_ratio * lr`` at ``total``.
- ``inverse_sqrt``: linear warm-up, then ``sqrt(warmup / step)`` (the Nucleotide Transformer recipe).
- ``constant``: linear warm-up, then flat.

Defaults that learn at any run length (used by ``ntk pretrain`` when ``--lr``/``--warmup`` are not given):
:func:`default_warmup` (5% of the steps, at most 1,000) and :func:`default_pretrain_lr` (by model size, the
table :data:`PRETRAIN_LR_TABLE`); :func:`schedule_warning` says when a schedule never reaches its peak rate.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

SCHEDULES = ("cosine", "inverse_sqrt", "constant")

# (parameters up to, peak learning rate) for masked-LM pretraining without --lr. Small models need (and
# tolerate) a much larger rate than the 1e-4 of the Nucleotide Transformer recipe for 0.5-2.5 B parameters:
# measured on the yeast genome (README, `ntk pretrain`), `tiny` (0.4 M) reaches 8.02 nats in 300 steps with 1e-3
# against 8.19 with 1e-4 (issue #13), and the 60-step smoke run of tests/test_pretrain.py learns only from 3e-4
# up; rows above 30 M parameters are not measured here: they step down to the published 1e-4 of the NT recipe.
PRETRAIN_LR_TABLE: tuple[tuple[float, float], ...] = (
    (5e6, 1e-3),      # tiny (0.4 M), small (1.6 M), the embedded ntk-yeast-tiny (3 M)
    (30e6, 5e-4),
    (150e6, 3e-4),    # nt-v2-50m, nt-v2-100m
    (600e6, 1e-4),    # nt-v2-250m, nt-v2-500m, nt-500m-* (the NT recipe)
    (math.inf, 5e-5),  # 1 B and more (agro-nt-1b, nt-2.5b-*)
)
MAX_DEFAULT_WARMUP = 1000
WARMUP_FRACTION = 0.05


def default_pretrain_lr(n_params: int) -> float:
    """Peak learning rate for a model of ``n_params`` parameters (:data:`PRETRAIN_LR_TABLE`)."""
    return next(lr for limit, lr in PRETRAIN_LR_TABLE if n_params <= limit)


def default_warmup(steps: int) -> int:
    """Warm-up steps proportional to the run: 5% of ``steps`` (at least 1 for runs of 20 steps or more), at most
    1,000."""
    return int(min(MAX_DEFAULT_WARMUP, round(WARMUP_FRACTION * steps)))


def schedule_warning(schedule: str, warmup: int, total: int, lr: float) -> str | None:
    """A one-line warning when the schedule cannot reach its peak rate (warm-up as long as the run or longer),
    or spends most of the run warming up; None when it is fine."""
    if warmup >= total:
        top = lr * total / max(warmup, 1)
        return (f"warm-up ({warmup} steps) is as long as the run ({total} steps): the learning rate never reaches "
                f"its peak {lr:.2e} (highest {top:.2e}); lower --warmup (default: 5% of --steps)")
    if warmup > total / 2:
        return (f"warm-up ({warmup} steps) takes more than half of the run ({total} steps): the model trains at "
                f"its peak rate only briefly; lower --warmup (default: 5% of --steps)")
    return None


def describe_schedule(schedule: str, warmup: int, total: int, lr: float, min_lr_ratio: float = 0.0) -> str:
    """One line: the learning-rate schedule of a run, e.g. for the log at its start."""
    if schedule == "cosine":
        after = f"cosine decay to {lr * min_lr_ratio:.2g} at step {total}"
    elif schedule == "inverse_sqrt":
        after = f"inverse-sqrt decay (lr {lr * lr_factor(total - 1, schedule, warmup, total):.2e} at step {total})"
    else:
        after = "constant"
    return f"{schedule}: linear warm-up over {warmup} of {total} steps to peak lr {lr:.2e}, then {after}"


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
