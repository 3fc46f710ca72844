"""fp8 vs bf16 accuracy of SegmentNT probabilities (issue #19, `--precision fp8`): what fp8 trades.

Two models, each run on the same windows in bf16 and in fp8 (bf16 with the trunk's linear layers in float8 e4m3,
per-row scales: ``ntk/model/fp8.py``), and, for scale, in fp32:

1. the embedded model (ntk-yeast-tiny), end to end: ``segment_genome`` over a region of the yeast genome
   (default ``XVI:1-200000`` of ../shared/data/yeast, else data/sample), the same windows, crop and blending in
   each run; values read back from the BigWigs;
2. random full-size SegmentNT weights (the ``segment-nt`` preset of bench/segment_gpu.py: 29 layers, hidden
   1024), model only: ``--windows`` windows of ``--window`` nt cut from the same genome (on a CPU a short window,
   3 kb by default; on a GPU use the trained 30 kb), every position of each window compared (no crop).

Printed per model and feature: max |p_fp8 - p_bf16|, mean |dp|, the fraction of positions whose call at the
threshold (p >= 0.5) changes, and the same for bf16 vs fp32 (what bf16 itself already trades). Which fp8 path ran
is printed: ``torch._scaled_mm`` on the device (on the CPU, torch 2.13's CPU kernel: float32 accumulation of
the e4m3 products, the same math a GPU computes up to summation order) or ``--emulate`` (dequantise, fp32 matmul).
Wall times are printed but on a CPU are not a speed figure (no FP8 or native bf16 units); the GPU speed is
bench/segment_gpu.py's ``fp8`` row.

    python bench/fp8_accuracy.py [--region XVI:1-200000] [--windows 4] [--window 3072] [--device cpu]
                                 [--scaling row] [--emulate] [--skip-full] [--skip-embedded] [--threads N]
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

from ntk.model import NucleotideTransformer, preset_config  # noqa: E402
from ntk.model.fp8 import to_fp8  # noqa: E402
from ntk.model.tokenizer import sequence_codes  # noqa: E402

YEAST = ROOT.parent / "shared" / "data" / "yeast" / "genome.fa.gz"
SAMPLE = ROOT / "data" / "sample" / "genome.fa.gz"


def compare(ref: np.ndarray, test: np.ndarray, features: list[str], threshold: float = 0.5) -> list[dict]:
    """Per feature (and ``all``): max and mean |test - ref| and the fraction of positions whose call at
    ``threshold`` differs. ``ref``/``test``: [positions, features] probabilities, NaN where nothing was scored."""
    ok = ~np.isnan(ref[:, 0])
    ref, test = ref[ok], test[ok]
    rows = []
    for j, f in enumerate([*features, "all"]):
        a, b = (ref, test) if f == "all" else (ref[:, j], test[:, j])
        d = np.abs(b - a)
        flips = (a >= threshold) != (b >= threshold)
        rows.append({"feature": f, "positions": int(a.shape[0]), "max_abs_dp": float(d.max()),
                     "mean_abs_dp": float(d.mean()), "call_flip_fraction": float(flips.mean()),
                     "calls_ref": int((a >= threshold).sum())})
    return rows


def probabilities(out: Path, features: list[str], chrom: str, start: int, end: int) -> np.ndarray:
    import pyBigWig

    cols = []
    for f in features:
        with pyBigWig.open(str(out / f"{f}.bw")) as bw:
            cols.append(np.asarray(bw.values(chrom, start, end), dtype=np.float64))
    return np.stack(cols, 1)


def embedded(fasta: Path, region: str, device: str, threshold: float, tmp: Path) -> tuple[list[str], dict, dict]:
    from ntk.pipelines.segment import segment_genome

    chrom, span = region.split(":")
    start, end = (int(x) for x in span.replace(",", "").split("-"))
    probs, walls = {}, {}
    feats = None
    for prec in ("fp32", "bf16", "fp8"):
        t = time.perf_counter()
        res = segment_genome(fasta, tmp / prec, model=None, regions=[region], precision=prec, device=device,
                             threshold=threshold, zoom_levels=0, force=True)
        walls[prec] = time.perf_counter() - t
        feats = res.features
        probs[prec] = probabilities(tmp / prec, feats, chrom, start - 1, end)
        print(f"  embedded {prec}: {walls[prec]:.1f} s, {res.n_windows} windows", flush=True)
    return feats, probs, walls


def windows_of(fasta: Path, n: int, length: int, chrom: str = "XVI") -> list[str]:
    """``n`` ACGT-only windows of ``length`` nt, evenly spread over ``chrom`` (or the first contig)."""
    from ntk.io.fasta import IndexedFasta

    fa = IndexedFasta(fasta)
    try:
        names = [c.name for c in fa.contigs]
        c = chrom if chrom in names else names[0]
        size = next(x.length for x in fa.contigs if x.name == c)
        out, pos, step = [], 0, max(length, (size - length) // max(n, 1))
        while len(out) < n and pos + length <= size:
            s = fa.fetch(c, pos, pos + length).upper()
            if set(s) <= set("ACGT"):
                out.append(s)
                pos += step
            else:
                pos += length // 2
        return out
    finally:
        fa.close()


def full_size(fasta: Path, n: int, length: int, device: torch.device, scaling: str, emulate: bool
              ) -> tuple[list[str], dict, dict, dict]:
    cfg = preset_config("segment-nt")
    torch.manual_seed(0)
    with torch.device(device):
        m = NucleotideTransformer(cfg)
    seqs = windows_of(fasta, n, length)
    ids = [torch.from_numpy(m.tokenizer.tokenize_codes(sequence_codes(s))[0].astype(np.int64))[None] for s in seqs]
    probs, walls = {}, {}

    def run(name: str) -> None:
        t = time.perf_counter()
        out = []
        with torch.inference_mode():
            for x in ids:
                p = m(x.to(device), rescaling_factor=cfg.rescaling_for_tokens(x.shape[1]),
                      heads="segment").segment_probabilities
                out.append(p[0].float().cpu().numpy().astype(np.float64))
        if device.type == "cuda":
            torch.cuda.synchronize()
        walls[name] = time.perf_counter() - t
        probs[name] = np.concatenate(out)
        print(f"  full-size {name}: {walls[name]:.1f} s for {len(ids)} x {length} nt", flush=True)

    m = m.float().eval()
    run("fp32")
    m = m.to(torch.bfloat16)
    run("bf16")
    info = to_fp8(m, scaling=scaling, emulate=emulate)
    run("fp8")
    info = {"swapped": len(info["swapped"]), "kept": len(info["kept"]), "path": info["path"],
            "params": sum(p.numel() for p in m.parameters()) + sum(b.numel() for b in m.buffers())}
    return list(cfg.features), probs, walls, info


def table(title: str, feats: list[str], probs: dict, walls: dict, threshold: float) -> None:
    a = {r["feature"]: r for r in compare(probs["bf16"], probs["fp8"], feats, threshold)}
    b = {r["feature"]: r for r in compare(probs["fp32"], probs["bf16"], feats, threshold)}
    print(f"\n{title} (wall s: fp32 {walls['fp32']:.1f}, bf16 {walls['bf16']:.1f}, fp8 {walls['fp8']:.1f})")
    print(f"| feature | positions | fp8 vs bf16: max abs dp | mean abs dp | calls changed at {threshold} | "
          "bf16 vs fp32: max abs dp | mean abs dp | calls changed |")
    print("|---|---|---|---|---|---|---|---|")
    for f in [*feats, "all"]:
        r, s = a[f], b[f]
        name = f"**{f}**" if f == "all" else f
        print(f"| {name} | {r['positions']:,} | {r['max_abs_dp']:.3g} | {r['mean_abs_dp']:.2e} | "
              f"{r['call_flip_fraction']:.2e} | {s['max_abs_dp']:.3g} | {s['mean_abs_dp']:.2e} | "
              f"{s['call_flip_fraction']:.2e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--region", default="XVI:1-200000", help="region for the embedded model")
    ap.add_argument("--windows", type=int, default=4, help="windows for the full-size random model")
    ap.add_argument("--window", type=int, default=3072, help="window (nt) for the full-size model (GPU: 30000)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scaling", default="row", choices=["row", "tensor"])
    ap.add_argument("--emulate", action="store_true", help="fp8 by dequantise + fp32 matmul (full-size model)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-embedded", action="store_true")
    ap.add_argument("--skip-full", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    from ntk.model.fp8 import check_fp8_device
    check_fp8_device(dev)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"CPU ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"
    src = YEAST if YEAST.exists() else SAMPLE
    print(f"torch {torch.__version__}, {where}; genome {src}; fp8 path: "
          f"{'emulated (dequantise, fp32 matmul)' if a.emulate else 'torch._scaled_mm on ' + dev.type}, "
          f"{a.scaling} scaling")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        fasta = tmp / "genome.fa"
        with gzip.open(src, "rb") as f:
            fasta.write_bytes(f.read())
        if not a.skip_embedded:
            region = a.region if src == YEAST else "I:1-100000"
            feats, probs, walls = embedded(fasta, region, a.device, a.threshold, tmp)
            table(f"embedded ntk-yeast-tiny, `ntk segment` end to end over {region} "
                  f"(fp8 path: torch._scaled_mm on {dev.type}, row scaling)", feats, probs, walls, a.threshold)
        if not a.skip_full:
            feats, probs, walls, info = full_size(fasta, a.windows, a.window, dev, a.scaling, a.emulate)
            table(f"random full-size SegmentNT (segment-nt preset, seed 0), model only, {a.windows} windows x "
                  f"{a.window} nt of XVI (fp8: {info['swapped']} linears via {info['path']}, {info['kept']} kept "
                  f"bf16, {a.scaling} scaling)", feats, probs, walls, a.threshold)
            near = float(np.mean(np.abs(probs["bf16"] - 0.5) < 0.01))
            print(f"(random weights: {near:.1%} of bf16 (position, feature) values lie within 0.01 of the "
                  f"threshold, where any rounding can change a call)")


if __name__ == "__main__":
    main()
