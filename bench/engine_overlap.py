"""End to end vs model only, for `ntk embed` and `ntk score-variants` (issue #16: the engine overlaps reading,
model and writing).

Runs the two jobs end to end through their Python entry points, as the CLI does (files in, files out):
- embed: ``write_embeddings`` over ``fasta_inputs`` of a FASTA of ``--records`` random sequences (100-3000 nt,
  with N runs) -> Parquet;
- score-variants: ``score_variants`` of data/sample/variants.vcf against the sample genome -> VCF.gz + Parquet
  table (default scores, ``--window`` nt).
The model is ntk's embedded default (4 layers x hidden 128), so host work (reading, tokenizing, writing) is a
large share of the run, which is where overlapping it with the model shows. *Model only* is the wall time spent
inside the model's forward passes during the same run (a timer around ``model.forward``/``model.embed``); the
ratio end-to-end / model-only is the cost of everything else that is not hidden behind the model (1.0 = all
hidden). Best of ``--repeats`` runs; torch on ``--threads`` threads (1 by default: the second core is what the
reader and writer threads use).

Written to run against any ntk tree (the API it calls exists before and after issue #16): run it with
``PYTHONPATH=<tree>`` for each tree, in the same session, and compare the printed lines.

    PYTHONPATH=. python bench/engine_overlap.py [--records 400] [--window 1536] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import ntk
from ntk.io.fasta import IndexedFasta
from ntk.pipelines.embed import fasta_inputs, write_embeddings
from ntk.pipelines.score_variants import score_variants

SAMPLE = Path(ntk.__file__).resolve().parents[1] / "data" / "sample"  # the tree under test (same files in each)


class ModelClock:
    """Wall seconds inside the model's outermost forward/embed calls."""

    def __init__(self, model):
        self.seconds, self._depth = 0.0, 0
        for name in ("forward", "embed"):
            if hasattr(model, name):
                setattr(model, name, self._timed(getattr(model, name)))

    def _timed(self, fn):
        @functools.wraps(fn)
        def call(*a, **k):
            self._depth += 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - t
        return call


def make_fasta(path: Path, n: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ACGT", dtype=np.uint8)
    total = 0
    with open(path, "w") as f:
        for i in range(n):
            k = int(rng.integers(100, 3001))
            s = bytearray(alphabet[rng.integers(0, 4, k)].tobytes())
            if i % 7 == 0:
                a = int(rng.integers(0, k))
                s[a:a + 30] = b"N" * len(s[a:a + 30])
            f.write(f">s{i}\n{s.decode()}\n")
            total += k
    return total


def best(fn, repeats: int) -> tuple[float, float]:
    """(end-to-end wall, model wall) of the fastest of ``repeats`` runs."""
    runs = [fn() for _ in range(repeats)]
    return min(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=400)
    ap.add_argument("--window", type=int, default=1536)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d = Path(tempfile.mkdtemp(prefix="ntk-bench-"))
    nt = make_fasta(d / "seqs.fa", a.records)
    fasta = IndexedFasta(SAMPLE / "genome.fa.gz")

    def embed_run() -> tuple[float, float]:
        m = ntk.load_model(None)
        clock = ModelClock(m)
        t = time.perf_counter()
        write_embeddings(m, fasta_inputs(str(d / "seqs.fa")), d / "emb.parquet")
        return time.perf_counter() - t, clock.seconds

    def score_run() -> tuple[float, float]:
        m = ntk.load_model(None)
        clock = ModelClock(m)
        t = time.perf_counter()
        score_variants(str(SAMPLE / "variants.vcf"), fasta, model=m, window=a.window, output=str(d / "v.vcf.gz"),
                       table=str(d / "v.parquet"), force=True)
        return time.perf_counter() - t, clock.seconds

    embed_run()  # warm-up (imports, allocator)
    print(f"ntk {ntk.__version__} from {Path(ntk.__file__).parent.parent}; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} on {a.threads} thread(s); load {os.getloadavg()[0]:.1f}")
    for label, fn, what in (("embed", embed_run, f"{a.records} records, {nt:,} nt -> Parquet"),
                            ("score-variants", score_run, f"171 records, {a.window}-nt windows -> VCF.gz + Parquet")):
        e2e, model = best(fn, a.repeats)
        print(f"{label:15s} {what}: end-to-end {e2e:6.2f} s, model only {model:6.2f} s, "
              f"ratio {e2e / model:.2f} (best of {a.repeats})")


if __name__ == "__main__":
    main()
