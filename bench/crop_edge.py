"""How much a SegmentNT prediction depends on the position's distance to the window edge, and what each crop
costs (issue #19, "less redundant work": the default crop W/8 each side recomputes 25% of every window).

1. Edge effect (embedded model ``ntk-yeast-tiny``, real yeast sequence): windows of the model's default length W
   slide over a stretch of held-out chromosome XVI in steps of 24 nt (the tokenization and U-Net pooling period,
   so every window sees the same 6-mer frame and pooling phase at every position: only the context differs).
   Each position's reference is the mean of its predictions by the windows that hold it in their central half
   (see :func:`edge_profile`). For every window covering it, |dp| = |p - p_ref| (probabilities, all features)
   is binned by the position's distance to the nearer window edge: max, mean, 99.9th percentile and the
   fraction of calls at 0.5 that flip, per 48-nt bin.
2. What segment writes with each crop: the stretch tiled with ``plan/windows.tile`` and blended with
   ``windows.Blender`` (exactly ntk segment's tiling and default linear blend), compared with the same
   references (positions within W of the stretch ends, which one window covers alone, left out).
3. Cost, full-size SegmentNT (the ``segment-nt`` preset config, 30 kb windows, 5,001 tokens; FLOPs from the
   config, no weights needed): FLOPs per window, the recomputed fraction 2c/W, and the model time of a 3.1 Gbp
   genome scaled from the H200 bf16 measurement in bench/RESULTS.md (199,003 tokens/s, crop W/8).

    python bench/crop_edge.py [--length 60000] [--threads 2]
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ntk  # noqa: E402
from ntk.model import preset_config  # noqa: E402
from ntk.model.tokenizer import sequence_codes  # noqa: E402
from ntk.plan.windows import Blender, tile  # noqa: E402

STEP = 24  # 6 nt per token x 2**2 U-Net pooling: windows this far apart see the same frame
YEAST = ROOT.parent / "shared" / "data" / "yeast" / "genome.fa.gz"
SAMPLE = ROOT / "data" / "sample" / "genome.fa.gz"
H200_TOKENS_PER_S = 199_003  # bench/RESULTS.md, segment_gpu (H200, bf16, crop W/8)


def read_slice(path: Path, chrom: str, start: int, length: int) -> str:
    """``length`` nt of ``chrom`` from ``start`` (0-based) in a plain or gzip FASTA, read sequentially."""
    opener = gzip.open if str(path).endswith(".gz") else open
    parts, have, on = [], 0, False
    with opener(path, "rt") as f:
        for line in f:
            if line.startswith(">"):
                if on:
                    break
                on = line[1:].split()[0] == chrom
                pos = 0
                continue
            if not on:
                continue
            s = line.strip()
            a, b = max(start - pos, 0), min(start + length - pos, len(s))
            if a < b:
                parts.append(s[a:b])
                have += b - a
            pos += len(s)
            if have >= length:
                break
    seq = "".join(parts).upper()
    if len(seq) < length:
        raise SystemExit(f"{path}: {chrom} has fewer than {start + length} nt")
    if set(seq) - set("ACGT"):
        raise SystemExit(f"{path}: {chrom}:{start}-{start + length} holds non-ACGT codes: choose another stretch")
    return seq


class Predictor:
    """Probabilities [W, F] of windows of ``seq`` by start, computed in batches and cached."""

    def __init__(self, m, seq: str, W: int, batch: int):
        self.m, self.W, self.batch = m, W, batch
        self.codes = sequence_codes(seq.encode())
        self.cache: dict[int, np.ndarray] = {}
        self.seconds = 0.0

    def run(self, starts: list[int]) -> None:
        todo = [s for s in starts if s not in self.cache]
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(todo), self.batch):
                part = todo[i:i + self.batch]
                ids = np.stack([self.m.tokenizer.tokenize_codes(self.codes[s:s + self.W])[0] for s in part])
                ids = torch.from_numpy(ids.astype(np.int64))
                p = self.m(ids, rescaling_factor=self.m.config.rescaling_for_tokens(ids.shape[1]))
                p = p.segment_probabilities.float().numpy()
                for s, v in zip(part, p):
                    self.cache[s] = v
        self.seconds += time.perf_counter() - t0

    def __getitem__(self, start: int) -> np.ndarray:
        if start not in self.cache:
            self.run([start])
        return self.cache[start]


def edge_profile(pred: Predictor, L: int, bin_nt: int) -> tuple[tuple[np.ndarray, np.ndarray], dict]:
    """References and |dp| by distance to the nearer window edge.

    The reference of position p is the mean of its predictions by the grid windows that hold it in their
    central half (distance to the nearer edge >= W/4: W/2 / 24 windows); a window that is one of those is
    compared with the mean of the others (leave one out), so the central bins show the spread between windows
    that all see p deep inside (the floor no crop can go below) and the edge bins what the edge adds."""
    W = pred.W
    starts = list(range(0, L - W + 1, STEP))
    pred.run(starts)
    F = pred[0].shape[1]
    total = np.zeros((L, F), np.float64)
    count = np.zeros(L, np.int64)
    d = np.arange(W)
    edge = np.minimum(d, W - 1 - d)
    central = edge >= W // 4
    for s in starts:
        total[s + d[central]] += pred[s][central]
        count[s + d[central]] += 1
    full = W // 2 // STEP  # positions held in the central half of this many grid windows
    has_ref = count == full
    ref = np.where(has_ref[:, None], total / np.maximum(count, 1)[:, None], np.nan).astype(np.float32)
    nbins = -(-(W // 2) // bin_nt)
    diffs: list[list[np.ndarray]] = [[] for _ in range(nbins)]
    flips = np.zeros(nbins)
    counts = np.zeros(nbins)
    for s in starts:
        p = s + d
        ok = has_ref[p]
        v = pred[s]
        r = ref[p].astype(np.float64)
        loo = (total[p] - v) / (full - 1)  # leave this window out of its own reference
        r[central] = loo[central]
        err = np.abs(v - r)
        flip = (v >= 0.5) != (r >= 0.5)
        for k in range(nbins):
            sel = ok & (edge // bin_nt == k)
            if sel.any():
                diffs[k].append(err[sel].ravel())
                flips[k] += flip[sel].sum()
                counts[k] += flip[sel].size
    rows = []
    for k in range(nbins):
        e = np.concatenate(diffs[k]) if diffs[k] else np.zeros(1)
        rows.append({"edge_nt": [k * bin_nt, min((k + 1) * bin_nt, W // 2)], "max": float(e.max()),
                     "mean": float(e.mean()), "p999": float(np.quantile(e, 0.999)),
                     "flip_fraction": float(flips[k] / max(counts[k], 1)), "n": int(e.size)})
    return (total, count), {"windows": len(starts), "positions_with_reference": int(has_ref.sum()),
                            "bins": rows}


def tiled(pred: Predictor, L: int, crop: int, sums: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """What ntk segment writes for the stretch with ``crop`` (tiling + default linear blend), and the reference
    without the windows it used (the mean of the other central-half predictions: no crop is favoured)."""
    W = pred.W
    wins = tile(0, L, W, crop, unit=STEP, chrom="x")
    pred.run([w.start for w in wins])
    out = np.full((L, pred[0].shape[1]), np.nan, np.float32)
    b = Blender("linear")
    done = []
    for w in wins:
        done += b.push(w, pred[w.start])
    done += b.flush()
    for w, kept, _ in done:
        out[w.keep_start:w.keep_end] = kept
    total, count = sums[0].copy(), sums[1].copy()
    full = count.max()
    d = np.arange(W)
    central = np.minimum(d, W - 1 - d) >= W // 4
    for w in wins:
        if w.start % STEP == 0:
            total[w.start + d[central]] -= pred[w.start][central]
            count[w.start + d[central]] -= 1
    ref = np.where((sums[1] == full)[:, None], total / np.maximum(count, 1)[:, None], np.nan)
    return out, ref


def segment_nt_cost() -> dict:
    cfg = preset_config("segment-nt")
    W = (cfg.max_tokens - 1) * 6 // 24 * 24
    T = W // 6 + 1
    L, H, F = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    linear, attention, unet = L * 2 * (4 * H * H + 3 * H * F), L * 4 * T * H, 2 * 66e6
    per_token = linear + attention + unet
    rows = []
    for name, c in (("0", 0), ("W/32", W // 32 // 12 * 12), ("W/16", W // 16 // 12 * 12), ("W/8 (default)", W // 8),
                    ("W/4", W // 4)):
        kept = W - 2 * c
        minutes = 3.1e9 / kept * T / H200_TOKENS_PER_S / 60
        rows.append({"crop": name, "crop_nt": c, "recomputed_fraction": 2 * c / W, "compute_per_kept_nt": W / kept,
                     "gflop_per_kept_nt": per_token * T / kept / 1e9, "human_genome_model_minutes_h200": minutes})
    return {"window_nt": W, "tokens": T, "gflop_per_token": per_token / 1e9,
            "gflop_per_token_parts": {"linear": linear / 1e9, "attention": attention / 1e9, "unet_fc": unet / 1e9},
            "gflop_per_window": per_token * T / 1e9, "crops": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ntk-yeast-tiny")
    ap.add_argument("--fasta", default=None, help="default: ../shared/data/yeast/genome.fa.gz, else data/sample")
    ap.add_argument("--chrom", default=None, help="default XVI (held out of the embedded model's training)")
    ap.add_argument("--start", type=int, default=200_000)
    ap.add_argument("--length", type=int, default=60_000)
    ap.add_argument("--bin", type=int, default=48, help="nt per distance-to-edge bin")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fasta = Path(args.fasta) if args.fasta else (YEAST if YEAST.is_file() else SAMPLE)
    chrom = args.chrom or ("XVI" if fasta == YEAST else "chrI")
    m = ntk.load_model(args.model, device="cpu", dtype=torch.float32).eval()
    W = m.config.default_window("segment")
    seq = read_slice(fasta, chrom, args.start, args.length)
    pred = Predictor(m, seq, W, args.batch)
    feats = list(m.config.features)
    sums, prof = edge_profile(pred, args.length, args.bin)
    print(f"model {args.model}: window W = {W} nt, features {', '.join(feats)}; {fasta.name} {chrom}:"
          f"{args.start + 1}-{args.start + args.length}; {prof['windows']} windows every {STEP} nt "
          f"({pred.seconds:.0f} s)")
    print("\n| distance to the nearer window edge (nt) | fraction of W | max |dp| | 99.9th pct |dp| | mean |dp| | "
          "calls flipped at 0.5 |")
    print("|---|---|---|---|---|---|")
    for r in prof["bins"]:
        a, b = r["edge_nt"]
        print(f"| {a}-{b} | {a / W:.3f}-{b / W:.3f} | {r['max']:.4f} | {r['p999']:.4f} | {r['mean']:.5f} | "
              f"{r['flip_fraction']:.2e} |")
    lo, hi = W, args.length - W  # positions a single window covers at the stretch ends are left out
    ok = sums[1][lo:hi] == sums[1].max()
    print(f"\n{int(ok.sum()):,} positions x {len(feats)} features compared")
    crops = sorted({0, W // 32 // 12 * 12, W // 16 // 12 * 12, W // 8, 3 * W // 16 // 12 * 12, W // 4})
    print("\n| crop (nt each side) | recomputed fraction of each window | max |dp| written vs reference | "
          "99.9th pct | mean |dp| | calls flipped at 0.5 |")
    print("|---|---|---|---|---|---|")
    tiles = []
    for c in crops:
        t, r = tiled(pred, args.length, c, sums)
        t, r = t[lo:hi][ok], r[lo:hi][ok]
        e = np.abs(t - r)
        row = {"crop_nt": c, "recomputed_fraction": 2 * c / W, "max": float(e.max()),
               "p999": float(np.quantile(e, 0.999)), "mean": float(e.mean()),
               "flip_fraction": float(((t >= 0.5) != (r >= 0.5)).mean())}
        tiles.append(row)
        print(f"| {c} ({c / W:.3f} W) | {2 * c / W:.3f} | {row['max']:.4f} | {row['p999']:.4f} | {row['mean']:.5f} | "
              f"{row['flip_fraction']:.2e} |")
    cost = segment_nt_cost()
    print(f"\nfull-size SegmentNT (segment-nt preset): W = {cost['window_nt']} nt, {cost['tokens']} tokens, "
          f"{cost['gflop_per_token']:.2f} GFLOP/token "
          f"({', '.join(f'{k} {v:.2f}' for k, v in cost['gflop_per_token_parts'].items())}), "
          f"{cost['gflop_per_window']:.0f} GFLOP/window")
    print("\n| crop | recomputed fraction | compute per kept nt (x no crop) | GFLOP per kept nt | "
          "human genome, model only, H200 bf16 at 199k tokens/s |")
    print("|---|---|---|---|---|")
    for r in cost["crops"]:
        print(f"| {r['crop']} ({r['crop_nt']} nt) | {r['recomputed_fraction']:.3f} | {r['compute_per_kept_nt']:.3f} | "
              f"{r['gflop_per_kept_nt']:.3f} | {r['human_genome_model_minutes_h200']:.1f} min |")
    if args.json:
        Path(args.json).write_text(json.dumps({"window": W, "profile": prof, "tiled": tiles, "cost": cost},
                                              indent=1))


if __name__ == "__main__":
    main()
