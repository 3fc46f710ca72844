"""Held-out per-nucleotide evaluation of segmentation models against an annotation, with a k-mer baseline.

Used by `make embedded-model` to write the model card's numbers. For each held-out contig, every position the
model scores (ACGT runs >= 24 nt) is compared with the annotation's 0/1 target per feature:
MCC at probability 0.5 and AUPRC (ntk.train.metrics.SegmentationMetrics).

Models are run through the real `ntk segment` pipeline (BigWigs read back). The baseline is a logistic model
per feature on k-mer features, trained on positions sampled from the training contigs:
  - counts of each 4-mer in the 101 nt centred on the position (normalised), and
  - one-hot bases at offsets -3..+3 (lets it learn GT/AG splice motifs).

    python scripts/eval_segmentation.py --genome G.fa.gz --annotation genes.gtf.gz --features a,b \
        --test-chroms XVI --model trained_dir --model untrained_dir [--names trained,untrained] -o metrics.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ntk.io.annotation import read_annotation
from ntk.io.fasta import IndexedFasta
from ntk.model.tokenizer import sequence_codes
from ntk.pipelines.segment import segment_genome
from ntk.train.metrics import SegmentationMetrics

HALF = 50  # k-mer count window: 2*HALF+1 nt
K = 4
LOCAL = 3  # one-hot bases at -LOCAL..+LOCAL
N_FEAT = 4**K + (2 * LOCAL + 1) * 4


def kmer_features(codes: np.ndarray) -> np.ndarray:
    """[L, N_FEAT] float32 features for every position of a code array (A,T,C,G=0..3, N=4)."""
    n = codes.size
    ok = codes < 4
    c = np.where(ok, codes, 0).astype(np.int64)
    kid = np.zeros(n, dtype=np.int64)
    valid = np.ones(n, dtype=bool)
    for j in range(K):
        sh = np.concatenate((c[j:], np.zeros(j, np.int64)))
        okj = np.concatenate((ok[j:], np.zeros(j, bool)))
        kid = kid * 4 + sh
        valid &= okj
    onehot = np.zeros((n + 1, 4**K), dtype=np.float32)
    onehot[np.flatnonzero(valid) + 1, kid[valid]] = 1.0
    cum = np.cumsum(onehot, axis=0)
    lo = np.clip(np.arange(n) - HALF, 0, n)
    hi = np.clip(np.arange(n) + HALF - K + 2, 0, n)
    counts = cum[hi] - cum[lo]
    counts /= np.maximum(counts.sum(1, keepdims=True), 1.0)
    local = np.zeros((n, 2 * LOCAL + 1, 4), dtype=np.float32)
    for k, off in enumerate(range(-LOCAL, LOCAL + 1)):
        idx = np.arange(n) + off
        inside = (idx >= 0) & (idx < n)
        src = np.where(inside, idx, 0)
        good = inside & ok[src]
        local[np.flatnonzero(good), k, codes[src[good]]] = 1.0
    return np.concatenate((counts * 10.0, local.reshape(n, -1)), axis=1)


def train_baseline(fa: IndexedFasta, ann, chroms: list[str], n_positions: int, seed: int) -> torch.nn.Linear:
    rng = np.random.default_rng(seed)
    total = sum(fa.lengths[c] for c in chroms)
    xs, ys = [], []
    for chrom in chroms:
        L = fa.lengths[chrom]
        take = max(1, int(n_positions * L / total))
        seq = sequence_codes(fa.fetch(chrom))
        pos = np.sort(rng.choice(L, size=min(take, L), replace=False))
        for a in range(0, L, 200_000):  # features in chunks to bound memory
            b = min(L, a + 200_000)
            sel = pos[(pos >= a) & (pos < b)]
            if sel.size == 0:
                continue
            lo, hi = max(0, a - HALF), min(L, b + HALF)
            f = kmer_features(seq[lo:hi])[sel - lo]
            xs.append(f)
            ys.append(ann.targets(chrom, a, b)[sel - a])
    X = torch.from_numpy(np.concatenate(xs))
    Y = torch.from_numpy(np.concatenate(ys).astype(np.float32))
    torch.manual_seed(seed)
    lin = torch.nn.Linear(X.shape[1], Y.shape[1])
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(lin(X), Y)
        loss.backward()
        opt.step()
    return lin


def eval_baseline(lin, fa, ann, chroms, features) -> dict:
    met = SegmentationMetrics(features)
    for chrom in chroms:
        L = fa.lengths[chrom]
        seq = sequence_codes(fa.fetch(chrom))
        for a in range(0, L, 200_000):
            b = min(L, a + 200_000)
            lo, hi = max(0, a - HALF), min(L, b + HALF)
            f = kmer_features(seq[lo:hi])[a - lo: a - lo + (b - a)]
            with torch.no_grad():
                p = torch.sigmoid(lin(torch.from_numpy(f))).numpy()
            scored = seq[a:b] < 4
            met.update(p[scored], ann.targets(chrom, a, b)[scored])
    return met.result()


def eval_model(model_dir: str, genome: str, ann, chroms: list[str], features: list[str], device: str) -> dict:
    import pyBigWig

    met = SegmentationMetrics(features)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seg"
        segment_genome(genome, out, model=model_dir, regions=chroms, features=features, device=device)
        bws = {f: pyBigWig.open(str(out / f"{f}.bw")) for f in features}
        for chrom in chroms:
            L = bws[features[0]].chroms()[chrom]
            for a in range(0, L, 200_000):
                b = min(L, a + 200_000)
                p = np.stack([np.asarray(bws[f].values(chrom, a, b, numpy=True)) for f in features], axis=1)
                scored = ~np.isnan(p).any(axis=1)
                met.update(p[scored], ann.targets(chrom, a, b)[scored])
        for bw in bws.values():
            bw.close()
    return met.result()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--genome", required=True)
    ap.add_argument("--annotation", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--test-chroms", required=True)
    ap.add_argument("--exclude-chroms", default="", help="contigs used neither for baseline training nor testing")
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--names", default="")
    ap.add_argument("--untrained-base", default=None,
                    help="also evaluate this base encoder with a freshly initialised head (as fine-tuning starts)")
    ap.add_argument("--baseline-positions", type=int, default=300_000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--render-only", action="store_true", help="print the table of an existing --output JSON")
    args = ap.parse_args()
    if args.render_only:
        print(render(json.loads(Path(args.output).read_text())))
        return
    features = args.features.split(",")
    test = args.test_chroms.split(",")
    fa = IndexedFasta(args.genome)
    ann = read_annotation(args.annotation, features, fa.lengths)
    excluded = set(test) | set(filter(None, args.exclude_chroms.split(",")))
    train = [c for c in fa.names if c not in excluded]
    results = {}
    names = args.names.split(",") if args.names else [Path(m).name for m in args.model]
    for name, m in zip(names, args.model):
        results[name] = eval_model(m, args.genome, ann, test, features, args.device)
    if args.untrained_base:
        from ntk.model import NTConfig, load_model, save_model
        from ntk.pipelines.finetune import build_task_model

        trained_cfg = NTConfig.from_json(Path(args.model[0]) / "config.json") if args.model else None
        rescaling = trained_cfg.rescaling_factor if trained_cfg else None
        untrained = build_task_model(load_model(args.untrained_base), "segment", features=features,
                                     rescaling_factor=rescaling)
        with tempfile.TemporaryDirectory() as tmp:
            save_model(untrained, Path(tmp) / "untrained")
            results["untrained_head"] = eval_model(str(Path(tmp) / "untrained"), args.genome, ann, test, features,
                                                   args.device)
    lin = train_baseline(fa, ann, train, args.baseline_positions, args.seed)
    results["kmer_logistic"] = eval_baseline(lin, fa, ann, test, features)
    report = {"test_chroms": test, "features": features, "baseline_train_chroms": train, "results": results}
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))


def _fmt(v: float) -> str:
    return "nan" if v != v else (f"{v:.3f}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}")


def render(report: dict) -> str:
    """Markdown table: MCC (at 0.5), AUPRC and AUROC per feature and model, plus the positive fraction."""
    res = report["results"]
    names = list(res)
    first = res[names[0]]
    lines = ["| feature | positives | " + " | ".join(f"{n} MCC / AUPRC / AUROC" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for f in report["features"] + ["(mean)"]:
        key = "" if f == "(mean)" else f"/{f}"
        pos = _fmt(first.get(f"positive_fraction{key}", float("nan"))) if key else ""
        cells = [" / ".join(_fmt(res[n].get(m + key, float("nan"))) for m in ("mcc", "auprc", "auroc")) for n in names]
        lines.append(f"| {f} | {pos} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
