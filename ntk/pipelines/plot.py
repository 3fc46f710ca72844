"""Plot predicted per-nucleotide tracks (an ``ntk segment`` output directory) against a gene annotation.

One panel per feature: the predicted probability (BigWig) as a filled curve, the annotated intervals of the
same feature underneath as bars. Needs matplotlib (``pip install 'ntk[plot]'``, included in the dev extra).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError, NtkError
from ..io.annotation import read_annotation
from ..io.atomic import atomic_path
from ..io.intervals import Interval


def read_track(bw_path: Path, chrom: str, start: int, end: int) -> np.ndarray:
    import pyBigWig

    bw = pyBigWig.open(str(bw_path))
    try:
        if chrom not in bw.chroms():
            raise InputError(f"{bw_path}: no contig {chrom!r}")
        vals = np.asarray(bw.values(chrom, start, end, numpy=True), dtype=np.float32)
    finally:
        bw.close()
    return vals  # NaN where the model gave no value (N runs, short runs)


def plot_region(segment_dir: str | Path, region: Interval, out_png: str | Path, annotation: str | Path | None = None,
                features: list[str] | None = None, title: str | None = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NtkError("plotting needs matplotlib: pip install 'ntk[plot]'") from None
    segment_dir = Path(segment_dir)
    tracks = sorted(segment_dir.glob("*.bw"))
    if not tracks:
        raise InputError(f"{segment_dir}: no BigWig tracks (is it an `ntk segment` output directory?)")
    names = [p.stem for p in tracks]
    if features:
        missing = [f for f in features if f not in names]
        if missing:
            raise InputError(f"{segment_dir}: no track for {missing[0]!r} (tracks: {', '.join(names)})")
        names = list(features)
    ann = None
    if annotation is not None:
        wanted = []
        for f in names:
            try:
                read_annotation(annotation, [f])
                wanted.append(f)
            except InputError:
                pass  # a feature the annotation does not describe: plotted without a truth row
        ann = read_annotation(annotation, wanted) if wanted else None
    x = np.arange(region.start, region.end)
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 1.3 * len(names) + 0.8), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        y = read_track(segment_dir / f"{name}.bw", region.chrom, region.start, region.end)
        ax.fill_between(x, np.nan_to_num(y), step="mid", color="#3b75af", alpha=0.8, linewidth=0)
        ax.set_ylim(-0.35, 1.05)
        ax.set_yticks([0, 0.5, 1])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        ax.axhline(0.5, color="0.7", linewidth=0.5, linestyle=":")
        if ann is not None and name in ann.features:
            s, e = ann.intervals(name, region.chrom)
            sel = (e > region.start) & (s < region.end)
            for a, b in zip(s[sel], e[sel]):
                ax.add_patch(plt.Rectangle((max(a, region.start), -0.3), min(b, region.end) - max(a, region.start),
                                           0.18, color="#d1495b", linewidth=0))
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1, 0].set_xlabel(f"{region.chrom} position (bp)")
    fig.suptitle(title or f"ntk segment — {region.chrom}:{region.start + 1}-{region.end}"
                 + ("   (blue: predicted probability, red: annotation)" if ann is not None else ""), fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png
