"""ntk segment: end-to-end throughput against model-only forward time, and peak memory vs genome size.

1. Throughput. A synthetic genome (random ACGT with N gaps, several contigs) is segmented end to end with
   ``segment_genome`` (reading, tokenizing, model, BigWig + segments writing), and the same windows, in the same
   batches, are run through the model alone (pre-tokenized in memory; forward + copy of the probabilities to
   host). Runs are interleaved, best of ``--rounds``. Ratio = end-to-end / model-only (goal <= 1.10 on CPU).
   Two models: the golden tiny SegmentNT checkpoint (tests/data/golden/segment_nt_tiny: hidden 32, 2 layers,
   936-nt windows, so the model is cheap and the pipeline overhead shows most) and a small random-weight
   SegmentNT config (hidden 256, 4 layers, 7,488-nt windows: compute closer to a real model's share).
2. Memory. Peak RSS of a whole ``segment_genome`` run in a fresh subprocess, on a single-contig synthetic
   genome of 10 Mbp and of 50 Mbp (N gap every 20 Mbp; golden tiny model). Ratio = RSS(50 Mbp) / RSS(10 Mbp) (goal <= 1.1).

3. ``--proxy`` (issue #19): only the golden tiny model, with ONE torch thread: model-only vs end to end with the
   track writers in worker processes and in threads (``NTK_TRACK_WRITERS``), interleaved in the same run;
   ratio = end-to-end / model-only (goal <= 1.15 on the 2-core machine). Prints the load average before/after.

    python bench/segment_throughput.py [--quick] [--mbp 2] [--rounds 2] [--rss-sizes 10,50]
    python bench/segment_throughput.py --proxy --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ntk  # noqa: E402
from ntk.io.fasta import IndexedFasta  # noqa: E402
from ntk.model import NTConfig, NucleotideTransformer  # noqa: E402
from ntk.plan.batching import auto_token_budget  # noqa: E402
from ntk.pipelines.segment import family_of, iter_batches, iter_windows, plan_units, segment_genome  # noqa: E402
from ntk.model.tokenizer import sequence_codes  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "golden" / "segment_nt_tiny"
CPU: dict[str, float] = {}  # CPU seconds of this process (all its threads, not its children) in the last run
THRESHOLD = 0.6  # the random models hover around 0.5: keep segment calls sparse, as with a trained model


def write_genome(path: Path, contigs: list[int], seed: int = 0, gap_every: int = 3_000_000) -> int:
    """Random ACGT contigs (60-nt lines) with a 5 kb N gap every ``gap_every`` nt; returns total bp."""
    rng = np.random.default_rng(seed)
    acgt = np.frombuffer(b"ACGT", dtype=np.uint8)
    with open(path, "wb") as f:
        for i, n in enumerate(contigs):
            f.write(f">chr{i + 1}\n".encode())
            for s in range(0, n, 6_000_000):  # 6 Mbp at a time: memory stays small for big contigs
                e = min(s + 6_000_000, n)
                seq = acgt[rng.integers(0, 4, e - s)]
                for g in range((s // gap_every + 1) * gap_every - s, e - s, gap_every):
                    seq[g:g + 5000] = ord("N")
                full = seq.size // 60 * 60  # 6 Mbp blocks are whole lines; only a contig's end is short
                lines = seq[:full].reshape(-1, 60)
                f.write(np.concatenate([lines, np.full((lines.shape[0], 1), 10, np.uint8)], axis=1).tobytes())
                if full < seq.size:
                    f.write(seq[full:].tobytes() + b"\n")
    return sum(contigs)


def small_random_model() -> NucleotideTransformer:
    cfg = json.loads((GOLDEN / "config.json").read_text())
    cfg.update(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, intermediate_size=1024,
               max_position_embeddings=514)
    torch.manual_seed(0)
    m = NucleotideTransformer(NTConfig.from_dict(cfg))
    return m.eval()


def model_only(m, fasta: Path, rounds_of: int = 1) -> float:
    """Forward time of exactly the windows and batches segment_genome runs (tokenized beforehand)."""
    fa = IndexedFasta(fasta)
    units = plan_units(fa)
    W = m.config.default_window("segment")
    budget = auto_token_budget("cpu", m.config.hidden_size, m.config.num_hidden_layers)
    batches = []
    for batch in iter_batches(iter_windows(fa, units, W, W // 8, family_of(m)), budget, None):
        ids = np.stack([m.tokenizer.tokenize_codes(sequence_codes(fa.fetch(j.window.chrom, j.window.start,
                                                                           j.window.end)))[0] for j in batch])
        batches.append(torch.from_numpy(ids.astype(np.int64)))
    fa.close()
    fidx = torch.arange(len(m.config.features))
    t0 = time.perf_counter()
    CPU["model-only"] = time.process_time()
    with torch.inference_mode():
        for ids in batches:
            p = m(ids, rescaling_factor=m.config.rescaling_for_tokens(ids.shape[1])).segment_probabilities
            p.index_select(2, fidx).float().cpu().numpy()
    CPU["model-only"] = time.process_time() - CPU["model-only"]
    return time.perf_counter() - t0


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def end_to_end(m, fasta: Path, tmp: Path, writers: str | None = None) -> tuple[float, int]:
    """``writers``: the track writers (``NTK_TRACK_WRITERS``: process/thread; None = the default, auto)."""
    out = tmp / "out"
    old = os.environ.pop("NTK_TRACK_WRITERS", None)
    if writers:
        os.environ["NTK_TRACK_WRITERS"] = writers
    try:
        t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
        res = segment_genome(fasta, out, model=m, threshold=THRESHOLD, force=True)
        CPU["end-to-end"] = time.process_time() - c0
        CPU["children"] = _children_cpu() - k0
        return time.perf_counter() - t0, res.bp_scored
    finally:
        os.environ.pop("NTK_TRACK_WRITERS", None)
        if old is not None:
            os.environ["NTK_TRACK_WRITERS"] = old


def throughput(name: str, m, fasta: Path, rounds: int, tmp: Path) -> dict:
    e2e, ref, bp = [], [], 0
    for _ in range(rounds):
        ref.append(model_only(m, fasta))
        t, bp = end_to_end(m, fasta, tmp)
        e2e.append(t)
    r = {"model": name, "bp": bp, "end_to_end_s": min(e2e), "model_only_s": min(ref),
         "end_to_end_bp_per_s": bp / min(e2e), "ratio": min(e2e) / min(ref)}
    print(f"[{name}] {bp / 1e6:.2f} Mbp scored: end-to-end {min(e2e):.2f} s ({r['end_to_end_bp_per_s']:,.0f} bp/s), "
          f"model-only {min(ref):.2f} s -> ratio {r['ratio']:.3f} (goal <= 1.10)", flush=True)
    return r


def proxy(m, fasta: Path, rounds: int, tmp: Path) -> dict:
    """Issue #19 CPU proxy: model-only and end to end with each kind of track writers, interleaved, best of
    ``rounds``; ratio = end-to-end / model-only (goal <= 1.15 with one torch thread)."""
    times: dict[str, list[float]] = {"model-only": [], "thread": [], "process": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    kids: dict[str, list[float]] = {"thread": [], "process": []}
    bp = 0
    for _ in range(rounds):
        times["model-only"].append(model_only(m, fasta))
        cpu["model-only"].append(CPU["model-only"])
        for w in ("thread", "process"):
            t, bp = end_to_end(m, fasta, tmp, w)
            times[w].append(t)
            cpu[w].append(CPU["end-to-end"])
            kids[w].append(CPU["children"])
    ref = min(times["model-only"])
    r = {"bp": bp, "model_only_s": ref, "model_only_cpu_s": min(cpu["model-only"])}
    print(f"[proxy] {bp / 1e6:.2f} Mbp scored, model-only {ref:.2f} s (best of {rounds}; "
          f"{r['model_only_cpu_s']:.2f} CPU s)", flush=True)
    for w in ("thread", "process"):
        t = min(times[w])
        extra = min(cpu[w]) - r["model_only_cpu_s"]
        r[w] = {"end_to_end_s": t, "bp_per_s": bp / t, "ratio": t / ref, "host_cpu_s_in_model_process": extra,
                "writer_processes_cpu_s": min(kids[w])}
        print(f"[proxy] writers={w:8s} end-to-end {t:.2f} s ({bp / t:,.0f} bp/s) -> ratio {t / ref:.3f} "
              f"(goal <= 1.15); CPU in the model's process beyond the model: {extra:.2f} s, in writer processes: "
              f"{min(kids[w]):.2f} s", flush=True)
    return r


def rss_child(fasta: str, out: str) -> None:
    m = ntk.load_model(str(GOLDEN), device="cpu", dtype=torch.float32)
    t0 = time.perf_counter()
    res = segment_genome(fasta, out, model=m, threshold=THRESHOLD, force=True)
    print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": time.perf_counter() - t0, "bp_scored": res.bp_scored}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (0.5 Mbp throughput, 2 vs 10 Mbp RSS)")
    ap.add_argument("--mbp", type=float, default=None, help="throughput genome size (default 2, quick 0.5)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rss-sizes", default=None, help="two genome sizes in Mbp (default 10,50; quick 2,10)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--proxy", action="store_true",
                    help="issue #19 CPU proxy only: golden tiny model, ONE torch thread for the model, end-to-end / "
                         "model-only (goal <= 1.15); no small-model or RSS runs")
    ap.add_argument("--rss-child", nargs=2, metavar=("FASTA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.proxy:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    mbp = args.mbp or (0.5 if args.quick else 2.0)
    small, big = (float(x) for x in (args.rss_sizes or ("2,10" if args.quick else "10,50")).split(","))
    print(f"machine: {torch.get_num_threads()} torch threads, {os.cpu_count()} cores, CPU; torch {torch.__version__}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results: dict = {"throughput": []}
    with tempfile.TemporaryDirectory(prefix="ntk-bench-seg-") as d:
        tmp = Path(d)
        fasta = tmp / "genome.fa"
        n = int(mbp * 1e6)
        write_genome(fasta, [n // 2, n // 3, n - n // 2 - n // 3], gap_every=max(n // 5, 100_000))
        tiny = ntk.load_model(str(GOLDEN), device="cpu", dtype=torch.float32)
        if args.proxy:
            results["proxy"] = proxy(tiny, fasta, args.rounds, tmp)
            print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print(json.dumps(results))
            return
        results["throughput"].append(throughput("golden segment_nt_tiny (H32 L2, 936-nt windows)", tiny, fasta,
                                                args.rounds, tmp))
        sub = tmp / "small.fa"
        write_genome(sub, [n // 4], gap_every=max(n // 8, 100_000))
        results["throughput"].append(throughput("small random SegmentNT (H256 L4, 7488-nt windows)",
                                                small_random_model(), sub, args.rounds, tmp))
        rss = {}
        for size in (small, big):
            g = tmp / f"rss_{size:g}.fa"
            write_genome(g, [int(size * 1e6)], gap_every=20_000_000)  # runs of up to 20 Mbp
            p = subprocess.run([sys.executable, __file__, "--rss-child", str(g), str(tmp / f"rss_out_{size:g}")]
                               + (["--threads", str(args.threads)] if args.threads else []),
                               capture_output=True, text=True, check=True)
            rss[size] = json.loads(p.stdout.strip().splitlines()[-1])
            g.unlink()
            print(f"[rss] {size:g} Mbp single contig: peak RSS {rss[size]['rss_mb']:.0f} MB "
                  f"({rss[size]['seconds']:.0f} s, {rss[size]['bp_scored'] / 1e6:.1f} Mbp scored)", flush=True)
        ratio = rss[big]["rss_mb"] / rss[small]["rss_mb"]
        print(f"[rss] peak RSS {big:g} Mbp / {small:g} Mbp = {ratio:.3f} (goal <= 1.1)")
        results["rss"] = {"sizes_mbp": [small, big], "rss_mb": [rss[small]["rss_mb"], rss[big]["rss_mb"]],
                          "ratio": ratio}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
