"""Model-core throughput: ntk vs transformers.EsmForMaskedLM (SDPA attention) on the same v1-style weights.

NT-v2-50M dimensions (12 layers, hidden 512, 16 heads, FFN 2048) in the v1 layout that stock
EsmForMaskedLM loads (GELU FFN with bias, learned positions), batch 4 x 1000 tokens, same process,
runs interleaved. Prints tokens/s for both and the ratio ntk/transformers (goal >= 1.0 on CPU). On CUDA it
also measures bf16 tokens/s and MFU (model FLOP/s over the card's dense bf16 peak).

    python bench/core_throughput.py [--batch 4] [--tokens 1000] [--iters 5] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

import ntk

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def flops_per_token(L: int, H: int, F: int, V: int, T: int) -> float:
    """Forward FLOPs per token: 2 x matmul parameters + attention scores/values + LM head."""
    per_layer = 2 * (4 * H * H + 2 * H * F) + 2 * 2 * T * H
    lm_head = 2 * (H * H + H * V)
    return L * per_layer + lm_head


def timed(fn, iters: int, sync) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    import transformers

    torch.manual_seed(0)
    L, H, heads, F, V = 12, 512, 16, 2048, 4105
    cfg = transformers.EsmConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=heads,
                                 intermediate_size=F, hidden_act="gelu", hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0, max_position_embeddings=1002,
                                 position_embedding_type="absolute", layer_norm_eps=1e-12, pad_token_id=1,
                                 mask_token_id=2, token_dropout=True, tie_word_embeddings=False)
    try:
        ref = transformers.EsmForMaskedLM._from_config(cfg, attn_implementation="sdpa")
    except TypeError:
        ref = transformers.EsmForMaskedLM(cfg)
    ref = ref.eval()
    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = ntk.load_model(d, device=args.device)
    ref = ref.to(dev)
    ids = torch.randint(4, 4100, (args.batch, args.tokens), device=dev)
    ids[:, 0] = 3
    mask = torch.ones_like(ids)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    with torch.inference_mode():
        # same outputs first
        diff = (ours(ids, attention_mask=mask.bool()).logits - ref(input_ids=ids, attention_mask=mask).logits).abs().max()
        for _ in range(2):  # warm-up
            ours(ids, attention_mask=mask.bool())
            ref(input_ids=ids, attention_mask=mask)
        t_ours, t_ref = [], []
        for _ in range(args.rounds):
            t_ours.append(timed(lambda: ours(ids, attention_mask=mask.bool()), args.iters, sync))
            t_ref.append(timed(lambda: ref(input_ids=ids, attention_mask=mask), args.iters, sync))
    ntok = args.batch * args.tokens
    res = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
           "batch": f"{args.batch}x{args.tokens}", "max_abs_logit_diff": float(diff),
           "ntk_fp32_tokens_per_s": ntok / min(t_ours), "hf_fp32_tokens_per_s": ntok / min(t_ref)}
    res["ratio_ntk_over_hf"] = res["ntk_fp32_tokens_per_s"] / res["hf_fp32_tokens_per_s"]

    if dev.type == "cuda":
        ours_bf = ours.to(torch.bfloat16)
        ref_bf = ref.to(torch.bfloat16)
        with torch.inference_mode():
            for _ in range(3):
                ours_bf(ids, attention_mask=mask.bool())
                ref_bf(input_ids=ids, attention_mask=mask)
            tb = min(timed(lambda: ours_bf(ids, attention_mask=mask.bool()), args.iters * 4, sync) for _ in range(args.rounds))
            tr = min(timed(lambda: ref_bf(input_ids=ids, attention_mask=mask), args.iters * 4, sync) for _ in range(args.rounds))
        name = torch.cuda.get_device_name(dev)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        fpt = flops_per_token(L, H, F, V, args.tokens)
        res.update(ntk_bf16_tokens_per_s=ntok / tb, hf_bf16_tokens_per_s=ntok / tr, bf16_ratio=tr / tb,
                   flops_per_token=fpt, peak_bf16_flops=peak,
                   ntk_bf16_mfu=(ntok / tb * fpt / peak) if peak else None)
    print(json.dumps(res, indent=2))
    print(f"ratio ntk/transformers (fp32 tokens/s): {res['ratio_ntk_over_hf']:.3f}")


if __name__ == "__main__":
    main()
