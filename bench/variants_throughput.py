"""Variant-scoring throughput: ntk score-variants (shared reference windows, batched) vs one reference +
alternate forward pass per variant.

Dense synthetic VCF on yeast chromosome I from data/sample (one variant per ``--spacing`` nt, default 200;
SNVs with one small indel in ten), an NT-v2 model with random weights (default: NT-v2-50M dimensions, 12
layers x 512, with a ``--window`` nt context), same process, same threads.

- ``ntk``: :func:`ntk.pipelines.score_variants.score_variants` end to end (VCF in, Parquet out): one reference
  pass per tiled window shared by every variant in it, alternate (and masked, for llr) sequences batched by
  token budget.
- ``per-variant``: the straightforward loop through the Python API: for each variant a window centred on it,
  reference and alternate (and the masked reference, for llr) in one forward call, the same scores.

Prints variants/s for both and the ratio. Each ALT needs its own full-window pass in both methods (the
embedding scores compare whole-window embeddings), so sharing can save at most the reference pass:
the ratio from pass counts alone is bounded by 2x (embedding scores) and 1.5x (with llr); the rest comes from
batching.

    python bench/variants_throughput.py [--variants 60] [--window 1500] [--scores cosine,l2,l1,dot,llr]
        [--layers 12 --hidden 512] [--threads N] [--model DIR]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import ntk
from ntk.io.fasta import IndexedFasta
from ntk.model import NTConfig, NucleotideTransformer
from ntk.pipelines.score_variants import embedding_distances, score_variants

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"


def random_model(layers: int, hidden: int, window: int) -> NucleotideTransformer:
    torch.manual_seed(0)
    cfg = NTConfig.from_dict(dict(vocab_size=4107, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=max(1, hidden // 32), intermediate_size=4 * hidden,
                                  max_position_embeddings=window // 6 + 3, position_embedding_type="rotary",
                                  add_bias_fnn=False, architectures=["EsmForMaskedLM"]))
    m = NucleotideTransformer(cfg, lm_head=True).eval()
    m.requires_grad_(False)
    m.source = f"random NT-v2 {layers}x{hidden}"
    return m


def dense_vcf(path: Path, fasta: IndexedFasta, chrom: str, start: int, n: int, spacing: int) -> list[tuple]:
    rng = np.random.default_rng(5)
    recs = []
    for k in range(n):
        p = start + k * spacing  # 0-based
        if k % 10 == 9:  # a small deletion or insertion
            if k % 20 == 19:
                ref = fasta.fetch(chrom, p, p + 4)
                alt = ref[0]
            else:
                ref = fasta.fetch(chrom, p, p + 1)
                alt = ref + "".join(rng.choice(list("ACGT"), 3))
        else:
            ref = fasta.fetch(chrom, p, p + 1)
            alt = rng.choice([b for b in "ACGT" if b != ref])
        recs.append((chrom, p + 1, ref, alt))
    with open(path, "w") as f:
        f.write("##fileformat=VCFv4.2\n")
        f.write(f"##contig=<ID={chrom},length={fasta.lengths[chrom]}>\n")
        f.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
        for c, p, r, a in recs:
            f.write(f"{c}\t{p}\t.\t{r}\t{a}\t.\t.\t.\n")
    return recs


def per_variant(m, fasta: IndexedFasta, recs: list[tuple], window: int, llr: bool) -> list[float]:
    """One forward call per variant: [ref, alt(, masked ref)] in a window centred on the variant."""
    tok = m.tokenizer
    out = []
    with torch.inference_mode():
        for chrom, pos1, ref, alt in recs:
            p = pos1 - 1
            L = fasta.lengths[chrom]
            s = min(max(0, p - window // 2), L - window)
            rseq = fasta.fetch(chrom, s, s + window)
            d = len(alt) - len(ref)
            if d >= 0:
                aseq = rseq[d // 2:p - s] + alt + rseq[p - s + len(ref):window - (d - d // 2)]
            else:
                e = -d
                aseq = (fasta.fetch(chrom, s - e // 2, s) + rseq[:p - s] + alt + rseq[p - s + len(ref):]
                        + fasta.fetch(chrom, s + window, s + window + e - e // 2))
            seqs = [tok.tokenize(rseq)[0], tok.tokenize(aseq)[0]]
            t = None
            if llr and len(ref) == len(alt) == 1:
                ids, starts, ends = tok.tokenize(rseq)
                t = int(np.searchsorted(starts, p - s, side="right")) - 1
                masked = ids.copy()
                masked[t] = tok.mask_id
                seqs.append(masked)
            batch = tok.pad([(x, np.zeros(len(x)), np.zeros(len(x))) for x in seqs])
            x = m(batch.input_ids, attention_mask=batch.attention_mask, heads=False).last_hidden_state
            mk = batch.attention_mask[:2, 1:].unsqueeze(-1).float()
            e = ((x[:2, 1:].float() * mk.to(x.device)).sum(1) / mk.to(x.device).sum(1)).cpu().numpy()
            out.append(embedding_distances(e[0], e[1])["cosine"])
            if t is not None:
                logp = torch.log_softmax(m.lm_head(x[2, t]).float(), -1)
                out.append(float(logp[tok.token_to_id(aseq[starts[t]:ends[t]])] - logp[int(ids[t])]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", type=int, default=60)
    ap.add_argument("--spacing", type=int, default=200)
    ap.add_argument("--window", type=int, default=1500, help="nt (random model: positions sized to fit)")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--model", default=None, help="checkpoint directory instead of a random model")
    ap.add_argument("--scores", default="cosine,l2,l1,dot,llr")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the model runs there in fp32, both methods)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    m = ntk.load_model(args.model) if args.model else random_model(args.layers, args.hidden, args.window)
    m = m.to(args.device)
    window = args.window
    with tempfile.TemporaryDirectory(prefix="ntk-bench-") as d:
        d = Path(d)
        shutil.copy(SAMPLE / "genome.fa.gz", d / "genome.fa.gz")
        fasta = IndexedFasta(d / "genome.fa.gz")
        recs = dense_vcf(d / "dense.vcf", fasta, "I", 20_000, args.variants, args.spacing)
        llr = "llr" in args.scores

        per_variant(m, fasta, recs[:2], window, llr)  # warm-up
        t0 = time.perf_counter()
        per_variant(m, fasta, recs, window, llr)
        t_base = time.perf_counter() - t0

        score_variants(str(d / "dense.vcf"), fasta, model=m, scores=args.scores, window=window, output=None,
                       table=str(d / "warm.parquet"), regions=[f"I:20001-{20_000 + 3 * args.spacing}"])
        t0 = time.perf_counter()
        s = score_variants(str(d / "dense.vcf"), fasta, model=m, scores=args.scores, window=window, output=None,
                           table=str(d / "t.parquet"))
        t_ntk = time.perf_counter() - t0

    n = len(recs)
    base_passes = 2 * n + (sum(1 for r in recs if len(r[2]) == len(r[3]) == 1) if llr else 0)
    print(f"model {m.source}, {m.config.num_hidden_layers} layers x {m.config.hidden_size}, window {window} nt, "
          f"{n} variants every {args.spacing} nt, scores {args.scores}, device {args.device}, "
          f"threads {torch.get_num_threads()}")
    print(f"per-variant : {n / t_base:8.2f} variants/s  ({base_passes} window passes, {t_base:.1f} s)")
    p = s.passes
    print(f"ntk shared  : {n / t_ntk:8.2f} variants/s  (ref {p['ref']} + alt {p['alt']} + masked {p['masked']} "
          f"passes, {t_ntk:.1f} s)")
    print(f"ratio ntk/per-variant: {t_base / t_ntk:.2f}x  (pass-count ratio "
          f"{base_passes / (p['ref'] + p['alt'] + p['masked']):.2f}x; goal >= 5x)")


if __name__ == "__main__":
    main()
