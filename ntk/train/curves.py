"""``training_curves.png``: training loss (raw and smoothed) and evaluation metrics against the step.

Needs matplotlib (``pip install 'ntk[plot]'``); without it the plot is skipped with one log line.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

_warned = False


def _smooth(values: list[float], alpha: float = 0.05) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else (1 - alpha) * acc + alpha * v
        out.append(acc)
    return out


def plot_training_curves(rows: list[dict], path: str | Path, log: Callable[[str], object] | None = None) -> Path | None:
    """Draw loss (left) and evaluation metrics (right) from metrics rows; write ``path`` atomically
    (``log``: where the one "matplotlib is not installed" line goes)."""
    global _warned
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        if not _warned:
            if log is not None:
                log("matplotlib is not installed: training_curves.png skipped (pip install 'ntk[plot]')")
            _warned = True
        return None
    from ..io.atomic import atomic_path

    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None and r.get("step", 0) > 0]
    eval_keys = sorted({k for r in rows for k in r if k.startswith("val_") and r.get(k) is not None})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="0.75", lw=0.8, label="train loss")
        ax.plot(steps, _smooth(list(losses)), color="C0", lw=1.5, label="train loss (smoothed)")
    for k in eval_keys:
        if "loss" in k:
            pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None and math.isfinite(r[k])]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    others = [k for k in eval_keys if "loss" not in k and "perplexity" not in k]
    acc = [(r["step"], r["accuracy"]) for r in rows if r.get("accuracy") is not None and r.get("step", 0) > 0]
    if acc:
        steps, vals = zip(*acc)
        ax.plot(steps, _smooth(list(vals)), color="C0", lw=1.2, label="train accuracy (smoothed)")
    for k in others:
        pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None and math.isfinite(r[k])]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("metric")
    if acc or others:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
