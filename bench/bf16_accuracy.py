"""bf16 vs fp32 accuracy of `ntk segment` on the CPU (issue #20): what `--precision auto` may trade.

The same region of the real yeast sample genome is segmented end to end (``segment_genome``: windows, crop,
BigWigs) in fp32 and in bf16, with the golden tiny SegmentNT (tests/data/golden/segment_nt_tiny) and the embedded
default model. Printed per model: max and mean |p_bf16 - p_fp32| over every feature and position, the fraction
of (position, feature) calls that flip at the threshold (p >= 0.5 in one run, < 0.5 in the other), and the
number of segments in each run. ``runtime.CPU_BF16_BOUNDS`` holds the bounds `--precision auto` relies on.

On a CPU without native bf16 the bf16 run is slow (torch converts through fp32) but its numbers are the same
kind: bf16-rounded weights and activations, fp32 accumulation, fp32 LayerNorm and residual stream.

    python bench/bf16_accuracy.py [--region I:1-100000] [--golden-region I:1-230218] [--threads 2]
"""
from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ntk.model.runtime import CPU_BF16_BOUNDS  # noqa: E402
from ntk.pipelines.segment import segment_genome  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "golden" / "segment_nt_tiny"
SAMPLE = ROOT / "data" / "sample" / "genome.fa.gz"


def probabilities(out: Path, features: list[str], chrom: str, start: int, end: int) -> np.ndarray:
    import pyBigWig

    cols = []
    for f in features:
        with pyBigWig.open(str(out / f"{f}.bw")) as bw:
            cols.append(np.asarray(bw.values(chrom, start, end), dtype=np.float64))
    return np.stack(cols, 1)  # [positions, features], NaN where nothing was scored


def compare(model, region: str, fasta: Path, threshold: float, tmp: Path, name: str) -> dict:
    chrom, span = region.split(":")
    start, end = (int(x) for x in span.replace(",", "").split("-"))
    runs = {}
    for prec in ("fp32", "bf16"):
        t = time.perf_counter()
        res = segment_genome(fasta, tmp / f"{name}-{prec}", model=model, regions=[region], precision=prec,
                             device="cpu", threshold=threshold, zoom_levels=0, force=True)
        runs[prec] = (res, time.perf_counter() - t)
    feats = runs["fp32"][0].features
    p32 = probabilities(tmp / f"{name}-fp32", feats, chrom, start - 1, end)
    p16 = probabilities(tmp / f"{name}-bf16", feats, chrom, start - 1, end)
    ok = ~np.isnan(p32)
    d = np.abs(p16 - p32)[ok]
    flips = ((p32 >= threshold) != (p16 >= threshold))[ok]
    return {"model": name, "region": region, "positions": int(ok.sum() // len(feats)), "features": len(feats),
            "max_abs_dp": float(d.max()), "mean_abs_dp": float(d.mean()), "p99_abs_dp": float(np.quantile(d, 0.99)),
            "call_flips": int(flips.sum()), "call_flip_fraction": float(flips.mean()),
            "calls_fp32": int((p32[ok] >= threshold).sum()),
            "segments_fp32": runs["fp32"][0].n_segments, "segments_bf16": runs["bf16"][0].n_segments,
            "wall_fp32_s": runs["fp32"][1], "wall_bf16_s": runs["bf16"][1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--region", default="I:1-100000", help="region for the embedded model")
    ap.add_argument("--golden-region", default="I:1-230218", help="region for the golden tiny model")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads; bounds {CPU_BF16_BOUNDS}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        fasta = tmp / "genome.fa"
        with gzip.open(SAMPLE, "rb") as f:
            fasta.write_bytes(f.read())
        rows = [compare(str(GOLDEN), a.golden_region, fasta, a.threshold, tmp, "golden segment_nt_tiny"),
                compare(None, a.region, fasta, a.threshold, tmp, "embedded ntk-yeast-tiny")]
    print("| model | region | positions x features | max abs dp | p99 abs dp | mean abs dp | calls flipped at "
          f"{a.threshold} | segments fp32 / bf16 | within bounds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        within = (r["max_abs_dp"] <= CPU_BF16_BOUNDS["max_abs_dp"]
                  and r["call_flip_fraction"] <= CPU_BF16_BOUNDS["call_flip_fraction"])
        print(f"| {r['model']} | {r['region']} | {r['positions']:,} x {r['features']} | {r['max_abs_dp']:.2e} | "
              f"{r['p99_abs_dp']:.2e} | {r['mean_abs_dp']:.2e} | {r['call_flips']:,} of {r['calls_fp32']:,} calls "
              f"({r['call_flip_fraction']:.2e} of positions) | {r['segments_fp32']:,} / {r['segments_bf16']:,} | "
              f"{'yes' if within else 'NO'} |")


if __name__ == "__main__":
    main()
