"""`ntk embed` throughput: length bucketing vs input-order batches padded per batch (as HF pads).

A mixed-length set (uniform 100-6000 nt, random ACGT, fixed seed) is embedded twice with the same pipeline,
model and token budget (batch size x padded length per forward pass):
- ntk:       windows sorted by length, batches filled up to the token budget (what `ntk embed` does);
- reference: batched as an HF inference loop does: input order, a fixed batch size (as many sequences as the
  budget allows at the set's longest), each batch padded to its own longest sequence (dynamic padding,
  `DataCollatorWithPadding` / `tokenizer(..., padding=True)` per batch).
Runs alternate (--repeats, best of each counts). Prints sequences/s for both, their ratio (goal >= 2x), the
padding fraction of each, and the largest difference between the two sets of embeddings (should be ~1e-7:
bucketing does not change results). The token budget defaults to 8192, what `ntk embed` uses on CPU for
hidden-512 models (NT-v2-50M/100M).

The model is a random-weight NT-v2-style encoder small enough for a CPU run in a minute or two
(4 layers, hidden 128, 4 heads, context 1024 tokens so a 6000-nt sequence fits one window).

    python bench/embed_throughput.py [--n 200] [--budget 8192] [--repeats 2] [--device cpu] [--layers 4] [--hidden 128]
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from ntk.model.config import NTConfig
from ntk.model.nt import NucleotideTransformer
from ntk.pipelines.embed import Embedder


def make_model(layers: int, hidden: int, device: str) -> NucleotideTransformer:
    torch.manual_seed(0)
    cfg = NTConfig.from_dict(dict(
        vocab_size=4107, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=1026, position_embedding_type="rotary",
        add_bias_fnn=False, token_dropout=False, layer_norm_eps=1e-12, architectures=["EsmForMaskedLM"]))
    m = NucleotideTransformer(cfg)
    return m.to(device).eval().requires_grad_(False)


def run(model, seqs, budget: int, bucket: bool):
    emb = Embedder(model, token_budget=budget, bucket=bucket)
    t0, c0 = time.perf_counter(), time.process_time()
    blocks = list(emb.run(seqs))
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dt, cpu, np.concatenate([b.embeddings for b in blocks]), emb.stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="sequences")
    ap.add_argument("--budget", type=int, default=8192,
                    help="tokens per forward pass (batch x padded length); 8192 = ntk's CPU budget for hidden 512")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs of each; the fastest counts")
    a = ap.parse_args()

    rng = np.random.default_rng(a.seed)
    lengths = rng.integers(100, 6001, a.n)
    alphabet = np.frombuffer(b"ACGT", dtype=np.uint8)
    seqs = [(f"s{i}", alphabet[rng.integers(0, 4, n)].tobytes().decode()) for i, n in enumerate(lengths)]
    model = make_model(a.layers, a.hidden, a.device)
    run(model, seqs[:8], a.budget, True)  # warm-up

    t_ref = c_ref = t_ntk = c_ntk = float("inf")
    for _ in range(a.repeats):  # interleaved, best of each: a shared machine's load hits both alike
        t, c, e_ref, s_ref = run(model, seqs, a.budget, bucket=False)
        t_ref, c_ref = min(t_ref, t), min(c_ref, c)
        t, c, e_ntk, s_ntk = run(model, seqs, a.budget, bucket=True)
        t_ntk, c_ntk = min(t_ntk, t), min(c_ntk, c)
    diff = float(np.abs(e_ref - e_ntk).max())
    print(f"machine: {platform.machine()} {torch.get_num_threads()} torch threads, device {a.device}, "
          f"torch {torch.__version__}")
    print(f"set: {a.n} sequences, {lengths.min()}-{lengths.max()} nt (mean {lengths.mean():.0f}), "
          f"{s_ntk.tokens:,} tokens; model {a.layers} layers x {a.hidden} hidden, context 1024 tokens; "
          f"token budget {a.budget}")
    for label, t, c, st in (("reference (pad per batch) ", t_ref, c_ref, s_ref),
                            ("ntk (length-bucketed)     ", t_ntk, c_ntk, s_ntk)):
        print(f"{label}: {a.n / t:8.2f} seq/s  wall {t:7.2f} s  cpu {c:7.2f} s  {st.batches:3d} batches  "
              f"padding {st.padding_fraction:.1%}")
    print(f"ratio ntk / reference: {t_ref / t_ntk:.2f}x wall-clock (goal >= 2x; CPU-time ratio {c_ref / c_ntk:.2f}x); "
          f"max |difference| of embeddings {diff:.1e}")


if __name__ == "__main__":
    main()
