"""CPU seconds of the track writers alone, on the issue #19 proxy's workload (issue #19).

The chunks that ``segment_genome`` hands to its track writers in ``bench/segment_throughput.py --proxy`` (golden
tiny SegmentNT, 2 Mbp synthetic genome, threshold 0.6, 3 features) are captured once (``--capture``: one run of
the model, values saved to an .npz), then replayed ``--rounds`` times through the writers in this process:
one ``BigWigWriter`` per feature (with zoom levels) and the ``SegmentsBedWriter``, best CPU seconds
(``time.process_time``) of each, which is what the writer processes spend per 2 Mbp. ``--profile`` prints a
cProfile of one replay (per-function CPU).

    python bench/track_writer_cpu.py --capture /tmp/proxy_chunks.npz
    python bench/track_writer_cpu.py --chunks /tmp/proxy_chunks.npz --rounds 5 [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ntk.io.segments import SegmentsBedWriter  # noqa: E402
from ntk.io.tracks import BigWigWriter  # noqa: E402


def capture(path: Path, mbp: float) -> None:
    import torch

    import ntk
    from ntk.io import track_outputs as to
    from ntk.pipelines.segment import segment_genome

    sys.path.insert(0, str(ROOT / "bench"))
    from segment_throughput import GOLDEN, THRESHOLD, write_genome

    torch.set_num_threads(1)
    got: dict = {"chunks": []}
    init, flush = to.TrackOutputs.__init__, to.TrackOutputs.flush

    def init2(self, out_dir, chrom_sizes, features, *a, **k):
        got["chrom_sizes"], got["features"] = list(chrom_sizes), list(features)
        init(self, out_dir, chrom_sizes, features, *a, **k)

    def flush2(self):
        if self._parts:
            got["chunks"].append((self._chrom, self._start, np.concatenate(self._parts).astype(np.float32)))
        flush(self)

    to.TrackOutputs.__init__, to.TrackOutputs.flush = init2, flush2
    with tempfile.TemporaryDirectory() as d:
        fasta = Path(d) / "genome.fa"
        n = int(mbp * 1e6)
        write_genome(fasta, [n // 2, n // 3, n - n // 2 - n // 3], gap_every=max(n // 5, 100_000))
        m = ntk.load_model(str(GOLDEN), device="cpu", dtype=torch.float32)
        segment_genome(fasta, Path(d) / "out", model=m, threshold=THRESHOLD, force=True, writers="thread") \
            if "writers" in segment_genome.__code__.co_varnames else \
            segment_genome(fasta, Path(d) / "out", model=m, threshold=THRESHOLD, force=True)
    arrays = {f"v{i}": c[2] for i, c in enumerate(got["chunks"])}
    np.savez(path, chroms=np.array([c[0] for c in got["chunks"]]), starts=np.array([c[1] for c in got["chunks"]]),
             names=np.array([c for c, _ in got["chrom_sizes"]]), sizes=np.array([s for _, s in got["chrom_sizes"]]),
             features=np.array(got["features"]), threshold=THRESHOLD, **arrays)
    print(f"captured {len(got['chunks'])} chunks, {sum(c[2].shape[0] for c in got['chunks']):,} positions -> {path}")


def load(path: Path):
    z = np.load(path)
    chunks = [(str(c), int(s), z[f"v{i}"]) for i, (c, s) in enumerate(zip(z["chroms"], z["starts"]))]
    sizes = [(str(c), int(n)) for c, n in zip(z["names"], z["sizes"])]
    return chunks, sizes, [str(f) for f in z["features"]], float(z["threshold"])


def replay(chunks, sizes, features, threshold, out: Path) -> dict[str, float]:
    cpu = {}
    for f, name in enumerate(features):
        t = time.process_time()
        bw = BigWigWriter(out / f"{name}.bw", sizes, 10)
        for c, s, v in chunks:
            bw.add(c, s, np.ascontiguousarray(v[:, f]))
        bw.close()
        cpu[f"bigwig {name}"] = time.process_time() - t
    t = time.process_time()
    seg = SegmentsBedWriter(out / "segments.bed.gz", features, threshold, 1, 10)
    for c, s, v in chunks:
        seg.add(c, s, v)
    seg.close()
    cpu["segments BED"] = time.process_time() - t
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--capture", type=Path, help="run the proxy's model once and save the writers' chunks here")
    ap.add_argument("--mbp", type=float, default=2.0)
    ap.add_argument("--chunks", type=Path, help="replay these captured chunks")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--keep", type=Path, help="write the outputs of the last replay here")
    args = ap.parse_args()
    if args.capture:
        capture(args.capture, args.mbp)
        return
    chunks, sizes, features, threshold = load(args.chunks)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        out = args.keep or Path(d)
        out.mkdir(parents=True, exist_ok=True)
        for _ in range(args.rounds):
            for k, v in replay(chunks, sizes, features, threshold, out).items():
                best[k] = min(best.get(k, v), v)
        if args.profile:
            pr = cProfile.Profile(time.process_time)
            pr.enable()
            replay(chunks, sizes, features, threshold, out)
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(25)
    for k, v in best.items():
        print(f"{k:24s} {v:.3f} CPU s")
    print(f"{'total':24s} {sum(best.values()):.3f} CPU s (best of {args.rounds} per writer)")


if __name__ == "__main__":
    main()
