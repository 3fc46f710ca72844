"""NTv3 ``segment`` / ``tracks``: end-to-end bp/s against model-only time, and the activation peak per window.

1. Throughput. A small random-weight post-trained NTv3 (``num_downsamples`` 7 -> 128-nt window unit, U-Net widths
   64 -> 256, 4 Transformer layers of width 256, 2 species x 32 tracks, 6 BED elements; weights random, so only
   speed means anything) runs ``segment_genome`` (BED head: 6 BigWigs + segments BED) and ``tracks_genome``
   (BigWig head: 32 BigWigs) over a synthetic genome, and the same windows in the same batches through the model
   alone (encoded beforehand; forward + copy of the kept values to host). Interleaved, best of ``--rounds``.
   Ratio = end-to-end / model-only.
2. Memory. One forward pass of one window of each ``--mem-windows`` length (default 128 kb .. 1 Mb) in a fresh
   subprocess: the activation peak = peak RSS during the pass - RSS after loading the model (CPU), or
   ``torch.cuda.max_memory_allocated`` minus the weights (GPU, bf16).
3. On a GPU (``--device cuda``) the same runs in bf16.

    python bench/ntv3_throughput.py [--mbp 0.5] [--window 32768] [--rounds 2] [--mem-windows 131072,...]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ntk.io.fasta import IndexedFasta  # noqa: E402
from ntk.model.ntv3 import NTv3  # noqa: E402
from ntk.model.ntv3_config import NTv3Config  # noqa: E402
from ntk.plan.batching import auto_token_budget  # noqa: E402
from ntk.pipelines.family import NTv3Family  # noqa: E402
from ntk.pipelines.segment import iter_batches, plan_units, segment_genome  # noqa: E402
from ntk.pipelines.tracks import tracks_genome  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from segment_throughput import write_genome  # noqa: E402

TRACKS = 32


def small_config() -> NTv3Config:
    species = {"<unk>": 0, "<pad>": 1, "<mask>": 2, "<cls>": 3, "<eos>": 4, "<bos>": 5, "human": 6, "mouse": 7}
    return NTv3Config.from_dict(dict(
        num_downsamples=7, attention_heads=8, key_size=32, token_embed_dim=16, conv_init_embed_dim=64, embed_dim=256,
        ffn_embed_dim=1024, num_layers=4, conditions_names=["species"], conditions_vocab_size=[8],
        bigwigs_per_species={"human": [f"h{i}" for i in range(TRACKS)], "mouse": [f"m{i}" for i in range(TRACKS)]},
        bed_elements_names=["exon", "intron", "splice_donor", "splice_acceptor", "5UTR", "3UTR"],
        keep_target_center_fraction=0.375, species_to_token_id=species, num_species_special_tokens=6,
        architectures=["NTv3PostTrained"]))


def small_model(device="cpu", dtype=torch.float32) -> NTv3:
    torch.manual_seed(0)
    m = NTv3(small_config())
    with torch.no_grad():  # the zero-initialised modulation layers of a fresh model would make it trivial
        for p in m.parameters():
            if p.dim() == 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return m.to(device, dtype).eval()


def model_only(m, fasta: Path, window: int, head: str, select: list[int]) -> float:
    fa = IndexedFasta(fasta)
    fam = NTv3Family(m)
    W, crop = fam.resolve(window, None)
    budget = auto_token_budget(m.device.type, m.config.conv_init_embed_dim, m.config.num_layers)
    batches = [fam.encode(fa, b, False)[0] for b in
               iter_batches(fam.jobs(fa, plan_units(fa), W, crop), budget, None, tokens=fam.tokens)]
    fa.close()
    sel = torch.as_tensor(select, device=m.device)
    sid = m.species_id("human")
    t = time.perf_counter()
    with torch.inference_mode():
        for ids in batches:
            vals, _ = fam.predict(ids.to(m.device), head, sel, ids.shape[0], False, sid)
            vals.float().cpu().numpy()
    if m.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def throughput(m, fasta: Path, bp: int, window: int, rounds: int, tmp: Path) -> list[dict]:
    rows = []
    for head, n in (("bed", 6), ("bigwig", TRACKS)):
        best_e2e = best_model = float("inf")
        for r in range(rounds):
            t = time.perf_counter()
            if head == "bed":
                res = segment_genome(fasta, tmp / f"seg{r}", model=m, species="human", window=window, force=True)
            else:
                res = tracks_genome(fasta, tmp / f"tr{r}", model=m, species="human", window=window, force=True)
            best_e2e = min(best_e2e, time.perf_counter() - t)
            best_model = min(best_model, model_only(m, fasta, window, head, list(range(n))))
        rows.append({"command": "segment" if head == "bed" else "tracks", "outputs": n, "windows": res.n_windows,
                     "end_to_end_s": round(best_e2e, 2), "model_only_s": round(best_model, 2),
                     "bp_per_s": round(bp / best_e2e), "ratio": round(best_e2e / best_model, 2)})
    return rows


MEM_CHILD = """
import resource, sys, time, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from ntv3_throughput import small_model
dev = {device!r}
m = small_model(dev, torch.bfloat16 if dev == "cuda" else torch.float32)
ids = torch.randint(6, 10, (1, {L}), device=dev)
with torch.inference_mode():
    m(ids[:, :1024], species_ids=6)  # warm-up (allocator, kernels)
    if dev == "cuda":
        torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    m(ids, species_ids=6)
    if dev == "cuda":
        torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) * 1024
    print(peak, time.perf_counter() - t)
"""


def activation_peak(L: int, device: str) -> tuple[float, float]:
    code = MEM_CHILD.format(root=str(ROOT), bench=str(ROOT / "bench"), device=device, L=L)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]) / 2**20, float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mbp", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=32768)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mem-windows", default="131072,262144,524288,1048576")
    ap.add_argument("--parts", default="throughput,memory", help="which measurements to run")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    m = small_model(a.device, dtype)
    print(f"model: {sum(p.numel() for p in m.parameters()) / 1e6:.1f}M parameters, {a.device} {dtype}, "
          f"{torch.get_num_threads()} threads", flush=True)
    with tempfile.TemporaryDirectory() as td:
        if "throughput" not in a.parts:
            td = None
        tmp = Path(td) if td else None
        if tmp is not None:
            bp = int(a.mbp * 1e6)
            fa = tmp / "g.fa"
            write_genome(fa, [bp * 2 // 3, bp - bp * 2 // 3], gap_every=200_000)
            for row in throughput(m, fa, bp, a.window, a.rounds, tmp):
                print(json.dumps(row), flush=True)
    for L in [int(x) for x in a.mem_windows.split(",") if x and "memory" in a.parts]:
        mib, secs = activation_peak(L, a.device)
        print(json.dumps({"window": L, "activation_peak_MiB": round(mib), "MiB_per_kb": round(mib / (L / 1000), 2),
                          "forward_s": round(secs, 2)}), flush=True)
    print("peak RSS of this process (MiB):", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


if __name__ == "__main__":
    main()
