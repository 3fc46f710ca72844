"""ChatNT generation speed: ntk's KV-cached decode vs the reference's full recompute per token, same process.

The golden ``chatnt_tiny`` configuration scaled up (decoder 4 layers x 512, 8 heads, FFN 1376, English vocab
2,048; resampler 2 layers, R = 16; NT encoder 2 layers x 128) with random weights, English length 512 as the
release uses, ``--batch`` prompts of ~60 tokens with one <DNA> each, ``--new`` tokens per prompt (EOS disabled so
every run decodes the same number). The reference path (``use_cache=False``) recomputes the whole 512-position
sequence for every token, as the notebook does; both paths must return identical ids. Prints tokens/s for both
and the ratio cached / recompute.

    python bench/chat_generation.py [--batch 2] [--new 32] [--rounds 2] [--threads N] [--device cpu|cuda] [--precision fp32|bf16]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ntk.model.chatnt import ChatNT, ChatNTConfig

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "data" / "golden" / "chatnt_tiny" / "config.json"


def scaled_config(L: int) -> ChatNTConfig:
    raw = json.loads(GOLDEN.read_text())
    V = 2048
    raw.update(seq_token_id=V, english_vocab_size=V, eos_token_id=-7, english_max_length=L, bio_max_length=256)
    raw["gpt_config"].update(vocab_size=V, embed_dim=512, ffn_embed_dim=1376, num_heads=8, num_kv_heads=8,
                             num_layers=4, rope_config={"max_seq_len": 2048, "dim": 64, "theta": 10000.0})
    raw["nt_config"].update(embed_dim=128, ffn_embed_dim=256, attention_heads=4, key_size=32, max_positions=512)
    raw["perceiver_resampler_config"].update(embed_dim=512, ffn_embed_dim=1024, attention_heads=8, key_size=64,
                                             resampled_length=16)
    return ChatNTConfig(raw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=60)
    ap.add_argument("--length", type=int, default=512, help="English length L (the release uses 512)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared, busy machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = scaled_config(args.length)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    m = ChatNT(cfg)
    with torch.no_grad():  # RMSNorm/LayerNorm scales of ones and zero biases are too tame: randomise everything
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 1 else 1.0 / max(p.shape[-1], 1) ** 0.5) + (p.dim() == 1))
    m = m.to(args.device, dtype).eval()
    rng = np.random.default_rng(0)
    B, L = args.batch, cfg.english_max_length
    eng = np.full((B, L), cfg.english_pad_id, dtype=np.int64)
    for b in range(B):
        n = args.prompt - 3 * b
        eng[b, :n] = rng.integers(3, cfg.gpt.vocab_size, size=n)
        eng[b, 0] = cfg.bos_id
        eng[b, n // 2] = cfg.seq_token_id
    bio = np.ones((B, 1, 200), dtype=np.int64)
    bio[:, 0, 0] = 3
    bio[:, 0, 1:] = rng.integers(4, cfg.nt.vocab_size, size=(B, 199))

    sync = (lambda: torch.cuda.synchronize()) if args.device.startswith("cuda") else (lambda: None)

    def run(use_cache: bool):
        sync()
        t0 = time.perf_counter()
        ids = m.generate(eng, bio, max_new_tokens=args.new, use_cache=use_cache)
        sync()
        return time.perf_counter() - t0, ids

    run(True), run(False)  # warm-up
    best = {True: float("inf"), False: float("inf")}
    ids = {}
    for _ in range(args.rounds):
        for use_cache in (True, False):
            t, ids[use_cache] = run(use_cache)
            best[use_cache] = min(best[use_cache], t)
    same = torch.equal(ids[True], ids[False])
    n_tokens = int((ids[True] >= 0).sum())
    cached, full = n_tokens / best[True], n_tokens / best[False]
    print(f"device={args.device} precision={args.precision} threads={torch.get_num_threads()} batch={B} L={L} "
          f"prompt~{args.prompt} R={cfg.resampled_length} new={args.new} decoder={cfg.gpt.num_layers}x{cfg.gpt.embed_dim} "
          f"params={m.num_parameters() / 1e6:.1f}M")
    print(f"KV cache : {cached:10.1f} tokens/s ({best[True]:.2f} s)")
    print(f"recompute: {full:10.1f} tokens/s ({best[False]:.2f} s)  (reference: full sequence per token)")
    print(f"ratio cached/recompute: {cached / full:.2f}   identical ids: {same}")
    if not same:
        raise SystemExit("cached and recomputed generation differ")


if __name__ == "__main__":
    main()
