"""ntk segment on a GPU with a full-size SegmentNT (random weights, the `segment-nt` preset: 29 layers, hidden
1024, 30 kb windows, 557M parameters): end-to-end bp/s vs model-only forward time on the same windows, tokens/s,
MFU, and the implied wall time for a 3.1 Gbp human genome.

    python bench/segment_gpu.py [--mbp 3] [--precision bf16]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from segment_throughput import THRESHOLD, write_genome  # noqa: E402

from ntk.io.fasta import IndexedFasta  # noqa: E402
from ntk.model import NucleotideTransformer, preset_config  # noqa: E402
from ntk.model.runtime import resolve_dtype  # noqa: E402
from ntk.model.tokenizer import sequence_codes  # noqa: E402
from ntk.plan.batching import auto_token_budget  # noqa: E402
from ntk.pipelines.segment import family_of, iter_batches, iter_windows, plan_units, segment_genome  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mbp", type=float, default=3.0)
    ap.add_argument("--preset", default="segment-nt")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--crop", type=int, default=None, help="nt cropped at each window side (default: window/8)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    cfg = preset_config(args.preset)
    torch.manual_seed(0)
    with torch.device(dev):
        m = NucleotideTransformer(cfg)
    m = m.to(resolve_dtype(args.precision, dev)).eval()
    params = sum(p.numel() for p in m.parameters())
    W = m.config.default_window("segment")
    res = {"gpu": torch.cuda.get_device_name(dev), "preset": args.preset, "params": params, "window_nt": W,
           "precision": args.precision}
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "genome.fa"
        n = int(args.mbp * 1e6)
        write_genome(fasta, [n // 2, n - n // 2])
        # warm-up (kernels, allocator) on a small region
        segment_genome(fasta, Path(tmp) / "warm", model=m, regions=["chr1:1-200000"], threshold=THRESHOLD, force=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = segment_genome(fasta, Path(tmp) / "out", model=m, threshold=THRESHOLD, force=True, crop=args.crop)
        torch.cuda.synchronize()
        e2e = time.perf_counter() - t0
        # model only: the same windows and batches, tokenized beforehand, on the GPU
        fa = IndexedFasta(fasta)
        budget = auto_token_budget("cuda", cfg.hidden_size, cfg.num_hidden_layers)
        batches = []
        crop = args.crop if args.crop is not None else W // 8
        for batch in iter_batches(iter_windows(fa, plan_units(fa), W, crop, family_of(m)), budget, None):
            ids = np.stack([m.tokenizer.tokenize_codes(sequence_codes(fa.fetch(j.window.chrom, j.window.start,
                                                                               j.window.end)))[0] for j in batch])
            batches.append(torch.from_numpy(ids.astype(np.int64)).pin_memory())
        n_tokens = sum(b.numel() for b in batches)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for ids in batches:
                ids = ids.to(dev, non_blocking=True)
                p = m(ids, rescaling_factor=cfg.rescaling_for_tokens(ids.shape[1])).segment_probabilities
                p.float().cpu()
        torch.cuda.synchronize()
        model_only = time.perf_counter() - t0
    L, H, F_, T = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, batches[0].shape[1]
    flops_tok = L * (2 * (4 * H * H + 3 * H * F_) + 4 * T * H) + 2 * 66e6  # encoder (SwiGLU) + ~U-Net/fc
    peak = next((v for k, v in PEAK_BF16.items() if k in res["gpu"]), None)
    res.update(crop=crop, stage_seconds=r.timings)
    res.update(bp_scored=r.bp_scored, windows=r.n_windows, end_to_end_s=e2e, model_only_s=model_only,
               ratio_e2e_over_model=e2e / model_only, bp_per_s=r.bp_scored / e2e, tokens_per_s=n_tokens / model_only,
               human_genome_minutes=3.1e9 / (r.bp_scored / e2e) / 60,
               mfu=(n_tokens / model_only * flops_tok / peak) if peak else None)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
