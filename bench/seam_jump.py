"""Seams of ``ntk segment``: how much the probability tracks jump where neighbouring windows are stitched.

A 6-mer model's windows see different tokenization frames and contexts, so neighbouring windows disagree where
they overlap. ``ntk segment`` owns each position from one window and, by default, blends the two windows'
predictions across their overlap (``--blend linear``). This bench runs ``segment_genome`` on a held-out yeast
chromosome (default XVI of ../shared/data/yeast) with the embedded default model and default options, then:

- boundaries: the first kept position of every window after the first of its ACGT run (the same tiling as the
  pipeline: ``plan.windows.tile`` with the default window and crop);
- jump at a position x: |p(x) - p(x-1)| per feature;
- ratio = mean jump at boundaries / mean jump at every other position (all features pooled; goal <= 1.5),
  also per feature. ``--compare none`` adds the same figures for the hard cut (``--blend none``), measured in
  the same run, as the reference.
- local ratio: the boundaries are token boundaries in both windows (window starts and the default crop are
  multiples of 24 nt), where a 6-mer model's output jumps more than inside a token (5 of every 6 "elsewhere"
  positions are inside a token); this ratio compares each boundary with the token boundaries 6, 12, 18 and 24 nt
  before and after it: same windows, same frame, nearly the same distance from the window edges. A seam shows
  as a local ratio above 1 (the hard cut: ~8); 1 means the stitch adds nothing to the model's own token steps.

    python bench/seam_jump.py [--genome ../shared/data/yeast/genome.fa.gz] [--region XVI] [--compare none]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ntk  # noqa: E402
from ntk.io.fasta import IndexedFasta, scan_acgt_runs  # noqa: E402
from ntk.io.intervals import parse_region  # noqa: E402
from ntk.pipelines.segment import segment_genome  # noqa: E402
from ntk.plan.windows import tile  # noqa: E402


def jumps(genome: str, region: str, model, blend: str, device: str, rc_average: bool, crop: int | None = None) -> dict:
    import pyBigWig

    fa = IndexedFasta(genome)
    iv = parse_region(region, fa.lengths)
    window, unit = model.config.default_window("segment"), model.config.window_unit
    crop = window // 8 if crop is None else crop
    runs = scan_acgt_runs(fa, iv.chrom, iv.start, iv.end, unit)
    bounds = [w.keep_start for s, e in runs for w in tile(s, e, window, crop, unit, iv.chrom)[1:]]
    feats = list(model.config.features)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        segment_genome(genome, Path(tmp) / "o", model=model, regions=[region], blend=blend, device=device,
                       rc_average=rc_average, crop=crop)
        seconds = time.perf_counter() - t0
        p = []
        for f in feats:
            bw = pyBigWig.open(str(Path(tmp) / "o" / f"{f}.bw"))
            p.append(np.asarray(bw.values(iv.chrom, iv.start, iv.end, numpy=True), dtype=np.float64))
            bw.close()
    p = np.stack(p, axis=1)  # [L, F]
    d = np.abs(np.diff(p, axis=0))  # d[i] = |p[i+1] - p[i]|: the jump into position iv.start + i + 1
    ok = ~np.isnan(d).any(axis=1)
    at = np.zeros(d.shape[0], dtype=bool)
    at[np.asarray(bounds, dtype=np.int64) - iv.start - 1] = True
    at &= ok
    other = ok & ~at
    # local reference: the token boundaries next to each stitch boundary (6, 12, 18 and 24 nt before and after it),
    # in the same two windows, at nearly the same distance from their edges, in the same tokenization frame
    idx = np.asarray(bounds, dtype=np.int64) - iv.start - 1
    near = np.zeros(d.shape[0], dtype=bool)
    for k in (6, 12, 18, 24):
        for j in (idx - k, idx + k):
            near[j[(j >= 0) & (j < d.shape[0])]] = True
    near &= other
    out = {"blend": blend, "rc_average": rc_average, "window": window, "crop": crop, "boundaries": int(at.sum()),
           "positions": int(other.sum()), "seconds": seconds,
           "jump_at_boundaries": float(d[at].mean()), "jump_elsewhere": float(d[other].mean())}
    out["ratio"] = out["jump_at_boundaries"] / out["jump_elsewhere"]
    out["jump_next_token_boundaries"] = float(d[near].mean())
    out["ratio_local"] = out["jump_at_boundaries"] / out["jump_next_token_boundaries"]
    out["per_feature"] = {f: {"at": float(d[at, j].mean()), "elsewhere": float(d[other, j].mean()),
                              "ratio": float(d[at, j].mean() / d[other, j].mean())} for j, f in enumerate(feats)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genome", default=str(ROOT.parent / "shared" / "data" / "yeast" / "genome.fa.gz"))
    ap.add_argument("--region", default="XVI")
    ap.add_argument("--model", default=None, help="default: the embedded default model")
    ap.add_argument("--compare", default=None, help="also measure this --blend mode (e.g. none) as reference")
    ap.add_argument("--rc-average", action="store_true")
    ap.add_argument("--crop", type=int, default=None, help="nt kept off each window end (default: window/8)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from ntk.model.runtime import resolve_device

    model = ntk.load_model(args.model, device=resolve_device(args.device))
    runs = [jumps(args.genome, args.region, model, "linear", args.device, args.rc_average, args.crop)]
    if args.compare:
        runs.append(jumps(args.genome, args.region, model, args.compare, args.device, args.rc_average, args.crop))
    for r in runs:
        print(f"blend={r['blend']:7s} window {r['window']} crop {r['crop']}: mean |dp| at {r['boundaries']} "
              f"boundaries {r['jump_at_boundaries']:.4f}, elsewhere {r['jump_elsewhere']:.4f}, "
              f"ratio {r['ratio']:.2f}; at the token boundaries +-6..24 nt away {r['jump_next_token_boundaries']:.4f}, "
              f"local ratio {r['ratio_local']:.2f}  ({r['seconds']:.0f} s)")
        print("    per feature: " + ", ".join(f"{f} {v['ratio']:.2f}" for f, v in r["per_feature"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
