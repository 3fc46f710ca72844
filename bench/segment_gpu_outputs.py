"""Where segment's GPU end-to-end time goes: full-size SegmentNT (random weights, bf16) on a 3 Mbp synthetic genome,
writing 14 tracks with and without zoom levels vs 1 track. Needs CUDA.

    python bench/segment_gpu_outputs.py
"""
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from segment_throughput import write_genome  # noqa: E402

from ntk.model import NucleotideTransformer, preset_config  # noqa: E402
from ntk.pipelines.segment import segment_genome  # noqa: E402


def main() -> None:
    cfg = preset_config("segment-nt")
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = NucleotideTransformer(cfg)
    m = m.to(torch.bfloat16).eval()
    with tempfile.TemporaryDirectory() as tmp:
        fa = Path(tmp) / "g.fa"
        write_genome(fa, [1_500_000, 1_500_000])
        segment_genome(fa, Path(tmp) / "w", model=m, regions=["chr1:1-200000"], threshold=0.6, force=True)
        runs = [("14 features, zoom 10", {}), ("14 features, zoom 0", {"zoom_levels": 0}),
                ("1 feature, zoom 0", {"zoom_levels": 0, "features": ["exon"]}), ("14 features, zoom 10 again", {})]
        for label, kw in runs:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            r = segment_genome(fa, Path(tmp) / "o", model=m, threshold=0.6, force=True, **kw)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            print(f"{label:28s} {dt:6.2f} s  {r.bp_scored / dt:10,.0f} bp/s  timings {r.timings}", flush=True)


if __name__ == "__main__":
    main()
