"""Scale-out bench (issue #10): wall time of `ntk segment` on the same genome with 1 process vs 2.

Three ways, measured in the same run on the same input:
  1. one process (torch uses every core);
  2. `torchrun --nproc-per-node 2 --no-python ntk segment ...` (each rank one shard; rank 0 merges);
  3. two `--shard I/2` processes started side by side, then `ntk merge` (what a SLURM array does).
Each rank/shard gets cores/2 torch threads. Printed: wall times and the ratio 1-process / 2-process (> 1 means
the split run is faster). On a 2-core machine the two processes share the cores the single process already
uses, so the ratio measures overhead (startup, scanning, merge), not speed-up; on a multi-GPU machine use
`--device cuda` (each rank takes cuda:LOCAL_RANK) and the bp/s per GPU is printed.

  python bench/scale_out.py [--mbp 0.5] [--device cpu|cuda] [--model DIR] [--ranks 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from segment_throughput import small_random_model, write_genome  # noqa: E402

from ntk.model import save_model  # noqa: E402

BIN = Path(sys.executable).parent


def timed(cmds: list[list[str]], env: dict) -> float:
    t = time.perf_counter()
    procs = [subprocess.Popen(list(map(str, c)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"failed: {err[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mbp", type=float, default=0.5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="checkpoint dir (default: small random SegmentNT, H256 L4)")
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    R = args.ranks
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            model = tmp / "model"
            save_model(small_random_model(), model)
        fa = tmp / "g.fa"
        bp = write_genome(fa, [int(args.mbp * 1e6 * 0.6), int(args.mbp * 1e6 * 0.4)], gap_every=200_000)
        common = ["-m", model, "--device", args.device, "-q"]
        env = dict(os.environ)
        # warm-up (page cache, .fai)
        timed([[BIN / "ntk", "segment", fa, "-o", tmp / "warm", "-r", "chr1:1-10000", *common]], env)

        one = timed([[BIN / "ntk", "segment", fa, "-o", tmp / "one", "--threads", str(cores), *common]], env)
        per = str(max(1, cores // R))
        tr = timed([[BIN / "torchrun", "--nproc-per-node", str(R), "--no-python", BIN / "ntk", "segment", fa,
                     "-o", tmp / "tr", "--threads", per, *common]], {**env, "OMP_NUM_THREADS": per})
        t_sh = timed([[BIN / "ntk", "segment", fa, "-o", tmp / f"p{i}", "--shard", f"{i}/{R}", "--threads", per,
                       *common] for i in range(1, R + 1)], env)
        t_merge = timed([[BIN / "ntk", "merge", *(tmp / f"p{i}" for i in range(1, R + 1)), "-o", tmp / "m"]], env)
        n_win = json.loads((tmp / "one" / "run.json").read_text())["n_windows"]
    res = {"bp": bp, "windows": n_win, "cores": cores, "device": args.device, "ranks": R,
           "one_process_s": round(one, 2), "torchrun_s": round(tr, 2), "shards_s": round(t_sh, 2),
           "merge_s": round(t_merge, 2), "ratio_torchrun": round(one / tr, 3),
           "ratio_shards_plus_merge": round(one / (t_sh + t_merge), 3),
           "bp_per_s_one": round(bp / one), "bp_per_s_per_rank_torchrun": round(bp / tr / R),
           "torch": torch.__version__}
    print(json.dumps(res, indent=2))
    print(f"1 process {one:.1f} s | torchrun x{R} {tr:.1f} s (ratio {one / tr:.2f}) | {R} shards {t_sh:.1f} s + "
          f"merge {t_merge:.1f} s (ratio {one / (t_sh + t_merge):.2f})")


if __name__ == "__main__":
    main()
