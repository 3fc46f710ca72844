"""Held-out per-nucleotide evaluation of segmentation models against an annotation, with two baselines.

Used by `make embedded-model` to write the model card's numbers. For each held-out contig (reported one table
per contig: one per species for the embedded model), every position the model scores (ACGT runs >= 24 nt) is
compared with the annotation's 0/1 target per feature: MCC at probability 0.5, AUPRC and AUROC
(ntk.train.metrics.SegmentationMetrics).

Models are run through the real `ntk segment` pipeline with its default options (BigWigs read back).
Baselines, both trained on the training contigs (``--train-chroms``):
  - **k-mer logistic**: a logistic model per feature on the normalised counts of each 4-mer in the 101 nt
    centred on the position plus one-hot bases at offsets -3..+3 (lets it learn GT/AG splice motifs), trained
    on ``--baseline-positions`` positions sampled from the training contigs.
  - **dilated CNN** (``train-cnn``): a residual 1-D CNN on one-hot bases, 48 channels, kernel 9, one block per
    dilation 1, 2, 4, 8, 16, 32 (receptive field 513 nt), one sigmoid output per feature, trained from scratch on
    random 2,048-nt windows with reverse-complement augmentation and the positive weighting of
    ``ntk finetune segment --pos-weight auto``, for a wall-clock budget: ``--seconds`` and/or for as long as
    process ``--while-pid`` runs (the model's fine-tuning, started alongside: the same wall-clock).

    python scripts/eval_segmentation.py train-cnn --genome G.fa --annotation genes.gtf --features a,b \
        --train-chroms I,II --while-pid PID -o cnn_dir
    python scripts/eval_segmentation.py evaluate --genome G.fa --annotation genes.gtf --features a,b \
        --train-chroms I,II --test-chroms XVI --model trained_dir [--names trained] [--cnn cnn_dir] -o metrics.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
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


def eval_baseline(lin, fa, ann, tests: list[tuple[str, int, int]], features) -> dict:
    met = SegmentationMetrics(features)
    for chrom, lo0, hi0 in tests:
        L = fa.lengths[chrom]
        seq = sequence_codes(fa.fetch(chrom))
        for a in range(lo0, hi0, 200_000):
            b = min(hi0, a + 200_000)
            lo, hi = max(0, a - HALF), min(L, b + HALF)
            f = kmer_features(seq[lo:hi])[a - lo: a - lo + (b - a)]
            with torch.no_grad():
                p = torch.sigmoid(lin(torch.from_numpy(f))).numpy()
            scored = seq[a:b] < 4
            met.update(p[scored], ann.targets(chrom, a, b)[scored])
    return met.result()


# -- dilated CNN baseline ----------------------------------------------------------------------------------------
CNN_CHANNELS, CNN_KERNEL, CNN_DILATIONS = 48, 9, (1, 2, 4, 8, 16, 32)
CNN_WINDOW, CNN_BATCH = 2048, 16
CNN_PAD = (CNN_KERNEL - 1) // 2 * (1 + sum(CNN_DILATIONS))  # receptive field: 2*CNN_PAD+1 nt


class _Block(torch.nn.Module):
    def __init__(self, ch: int, dilation: int):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(ch)
        self.conv = torch.nn.Conv1d(ch, ch, CNN_KERNEL, dilation=dilation, padding=dilation * (CNN_KERNEL - 1) // 2)
        self.mix = torch.nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        return x + self.mix(torch.relu(self.conv(torch.relu(self.norm(x)))))


class DilatedCNN(torch.nn.Module):
    """One-hot [B, 4, L] -> per-nucleotide logits [B, L, F]."""

    def __init__(self, n_features: int):
        super().__init__()
        self.stem = torch.nn.Conv1d(4, CNN_CHANNELS, CNN_KERNEL, padding=(CNN_KERNEL - 1) // 2)
        self.blocks = torch.nn.Sequential(*[_Block(CNN_CHANNELS, d) for d in CNN_DILATIONS])
        self.norm = torch.nn.BatchNorm1d(CNN_CHANNELS)
        self.out = torch.nn.Conv1d(CNN_CHANNELS, n_features, 1)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.blocks(self.stem(x))))).transpose(1, 2)


def one_hot(codes: np.ndarray) -> torch.Tensor:
    """uint8 codes [B, L] (A,T,C,G=0..3, N=4) -> float [B, 4, L] (N = all zeros)."""
    eye = np.concatenate((np.eye(4, dtype=np.float32), np.zeros((1, 4), np.float32)))
    return torch.from_numpy(eye[codes]).transpose(1, 2).contiguous()


_COMPLEMENT = np.array([1, 0, 3, 2, 4], dtype=np.uint8)  # A<->T, C<->G, N


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a finished child of another shell stays a zombie until reaped: count it as ended
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _process_age(pid: int) -> float:
    """Seconds since process ``pid`` started (0 if unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            start_ticks = int(fh.read().split(")")[-1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def train_cnn(fa: IndexedFasta, ann, chroms: list[str], features: list[str], out_dir: Path, seconds: float,
              while_pid: int | None, device: str, seed: int, lr: float = 2e-3) -> dict:
    from safetensors.torch import save_file

    from ntk.pipelines.finetune_segment import positive_weights

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    seqs = {c: sequence_codes(fa.fetch(c)) for c in chroms}
    lengths = np.array([seqs[c].size for c in chroms], dtype=np.float64)
    prob = np.clip(lengths - CNN_WINDOW, 0, None)
    prob /= prob.sum()
    pos_w = positive_weights("auto", ann, fa, chroms).to(dev)
    model = DilatedCNN(len(features)).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    t0 = time.monotonic()
    # a --while-pid process that started before us: train that much longer after it ends, so that the CNN's
    # wall-clock is at least the process's
    head_start = _process_age(while_pid) if while_pid is not None else 0.0
    ended_at = None
    step, losses = 0, []
    while True:
        now = time.monotonic()
        if while_pid is not None and ended_at is None and not pid_alive(while_pid):
            ended_at = now
        done_pid = while_pid is None or (ended_at is not None and now - ended_at >= head_start)
        if now - t0 >= seconds and done_pid:
            break
        xs, ys = [], []
        for ci in rng.choice(len(chroms), size=CNN_BATCH, p=prob):
            c = chroms[ci]
            a = int(rng.integers(0, seqs[c].size - CNN_WINDOW + 1))
            x, y = seqs[c][a:a + CNN_WINDOW], ann.targets(c, a, a + CNN_WINDOW)
            if rng.random() < 0.5:  # reverse complement (features are unstranded: targets just reversed)
                x, y = _COMPLEMENT[x[::-1]], y[::-1]
            xs.append(x)
            ys.append(y)
        x = one_hot(np.stack(xs)).to(dev)
        y = torch.from_numpy(np.stack(ys).astype(np.float32)).to(dev)
        logits = model(x)
        logp1, logp0 = torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
        w = torch.where(y > 0, pos_w, torch.ones_like(pos_w))
        loss = -(w * (y * logp1 + (1 - y) * logp0)).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"cnn step {step}  loss {np.mean(losses[-100:]):.4f}  {time.monotonic() - t0:.0f}s", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(out_dir / "model.safetensors"))
    meta = {"features": features, "train_chroms": chroms, "parameters": n_params, "steps": step,
            "seconds": time.monotonic() - t0, "while_pid_head_start_s": head_start,
            "windows_per_step": CNN_BATCH, "window": CNN_WINDOW,
            "final_loss": float(np.mean(losses[-100:])) if losses else math.nan, "lr": lr, "seed": seed,
            "device": str(dev), "positive_weights": [float(v) for v in pos_w.cpu()]}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def load_cnn(cnn_dir: Path) -> tuple[DilatedCNN, dict]:
    from safetensors.torch import load_file

    meta = json.loads((cnn_dir / "meta.json").read_text())
    model = DilatedCNN(len(meta["features"]))
    model.load_state_dict(load_file(str(cnn_dir / "model.safetensors")))
    return model.eval(), meta


def eval_cnn(model: DilatedCNN, fa: IndexedFasta, ann, test: tuple[str, int, int], features: list[str],
             chunk: int = 100_000):
    chrom, lo0, hi0 = test
    met = SegmentationMetrics(features)
    seq = sequence_codes(fa.fetch(chrom))
    L = seq.size
    for a in range(lo0, hi0, chunk):
        b = min(hi0, a + chunk)
        lo, hi = max(0, a - CNN_PAD), min(L, b + CNN_PAD)
        with torch.no_grad():
            p = torch.sigmoid(model(one_hot(seq[None, lo:hi]))[0]).numpy()[a - lo: a - lo + (b - a)]
        scored = seq[a:b] < 4
        met.update(p[scored], ann.targets(chrom, a, b)[scored])
    return met.result()


def parse_test(items: list[str], lengths: dict[str, int]) -> dict[str, tuple[str, int, int]]:
    """``CONTIG`` or ``CONTIG:START-END`` (1-based inclusive) -> {item: (contig, start0, end)}."""
    out = {}
    for it in items:
        chrom, _, rng = it.partition(":")
        if chrom not in lengths:
            raise SystemExit(f"error: test contig {chrom!r} is not in the genome")
        if rng:
            a, b = (int(x.replace(",", "")) for x in rng.split("-"))
            out[it] = (chrom, a - 1, min(b, lengths[chrom]))
        else:
            out[it] = (chrom, 0, lengths[chrom])
    return out


def eval_model(model_dir: str, genome: str, ann, tests: dict, features: list[str], device: str,
               **segment_options) -> dict:
    """Per test item: metrics of the model run through `ntk segment` (default options unless given), for the
    features the model predicts (the others are left out: NaN in the tables)."""
    import pyBigWig

    from ntk.model import NTConfig

    own = NTConfig.from_json(Path(model_dir) / "config.json").features or []
    features = [f for f in features if f in own]
    idx = [ann.features.index(f) for f in features]
    out_res = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seg"
        segment_genome(genome, out, model=model_dir, regions=list(tests), features=features, device=device,
                       **segment_options)
        bws = {f: pyBigWig.open(str(out / f"{f}.bw")) for f in features}
        for item, (chrom, lo, hi) in tests.items():
            met = SegmentationMetrics(features)
            for a in range(lo, hi, 200_000):
                b = min(hi, a + 200_000)
                p = np.stack([np.asarray(bws[f].values(chrom, a, b, numpy=True)) for f in features], axis=1)
                scored = ~np.isnan(p).any(axis=1)
                met.update(p[scored], ann.targets(chrom, a, b)[:, idx][scored])
            out_res[item] = met.result()
        for bw in bws.values():
            bw.close()
    return out_res


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--genome", required=True)
    ap.add_argument("--annotation", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--train-chroms", default="",
                    help="baselines' training contigs (default: every contig not tested or excluded)")
    ap.add_argument("--exclude-chroms", default="", help="contigs used neither for baseline training nor testing")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)


def main() -> None:
    import sys

    argv = sys.argv[1:]
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["evaluate", *argv]  # the pre-subcommand form
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train-cnn", help="train the dilated-CNN baseline")
    _common(tr)
    tr.add_argument("--seconds", type=float, default=0.0, help="train at least this long (wall-clock)")
    tr.add_argument("--while-pid", type=int, default=None, help="and for as long as this process runs")
    tr.add_argument("-o", "--output", required=True, help="directory: model.safetensors + meta.json")
    ev = sub.add_parser("evaluate", help="evaluate models and baselines on the test contigs")
    _common(ev)
    ev.add_argument("--test-chroms", required=True)
    ev.add_argument("--model", action="append", default=[])
    ev.add_argument("--names", action="append", default=[], help="names of the --model entries (comma-separated)")
    ev.add_argument("--untrained-base", default=None,
                    help="also evaluate this base encoder with a freshly initialised head (as fine-tuning starts)")
    ev.add_argument("--cnn", default=None, help="a train-cnn output directory to evaluate")
    ev.add_argument("--baseline-positions", type=int, default=300_000)
    ev.add_argument("-o", "--output", required=True)
    ev.add_argument("--render-only", action="store_true", help="print the tables of an existing --output JSON")
    ev.add_argument("--append", action="store_true",
                    help="merge into an existing --output JSON (same test items and features) instead of replacing")
    ev.add_argument("--no-kmer", action="store_true", help="skip the k-mer baseline")
    ev.add_argument("--rc-average", action="store_true",
                    help="also evaluate every --model with `ntk segment --rc-average` (named NAME+rc)")
    args = ap.parse_args(argv)
    if getattr(args, "render_only", False):
        print(render(json.loads(Path(args.output).read_text())))
        return
    features = args.features.split(",")
    fa = IndexedFasta(args.genome)
    ann = read_annotation(args.annotation, features, fa.lengths)
    tests = parse_test(args.test_chroms.split(","), fa.lengths) if args.cmd == "evaluate" else {}
    test = list(tests)
    excluded = {c for c, _, _ in tests.values()} | set(filter(None, args.exclude_chroms.split(",")))
    train = ([c for c in args.train_chroms.split(",") if c] if args.train_chroms
             else [c for c in fa.names if c not in excluded])
    if excluded & set(train):
        raise SystemExit(f"error: training contigs {sorted(excluded & set(train))} are also tested/excluded")
    if args.cmd == "train-cnn":
        meta = train_cnn(fa, ann, train, features, Path(args.output), args.seconds, args.while_pid, args.device,
                         args.seed)
        print(json.dumps(meta))
        return
    results: dict[str, dict] = {c: {} for c in test}
    report = {"test_chroms": test, "features": features, "baseline_train_chroms": train}
    names = [n for arg in args.names for n in arg.split(",")] or [Path(m).name for m in args.model]
    for name, m in zip(names, args.model):
        t0 = time.perf_counter()
        for item, r in eval_model(m, args.genome, ann, tests, features, args.device).items():
            results[item][name] = r
        report.setdefault("seconds", {})[name] = time.perf_counter() - t0
        if args.rc_average:
            t0 = time.perf_counter()
            for item, r in eval_model(m, args.genome, ann, tests, features, args.device, rc_average=True).items():
                results[item][name + "+rc"] = r
            report["seconds"][name + "+rc"] = time.perf_counter() - t0
    if args.untrained_base:
        from ntk.model import NTConfig, load_model, save_model
        from ntk.pipelines.finetune import build_task_model

        trained_cfg = NTConfig.from_json(Path(args.model[0]) / "config.json") if args.model else None
        rescaling = trained_cfg.rescaling_factor if trained_cfg else None
        untrained = build_task_model(load_model(args.untrained_base), "segment", features=features,
                                     rescaling_factor=rescaling)
        with tempfile.TemporaryDirectory() as tmp:
            save_model(untrained, Path(tmp) / "untrained")
            for item, r in eval_model(str(Path(tmp) / "untrained"), args.genome, ann, tests, features,
                                      args.device).items():
                results[item]["untrained_head"] = r
    if args.cnn:
        cnn, meta = load_cnn(Path(args.cnn))
        if meta["features"] != features:
            raise SystemExit(f"error: {args.cnn} predicts {meta['features']}, not {features}")
        for item in test:
            results[item]["dilated_cnn"] = eval_cnn(cnn, fa, ann, tests[item], features)
        report["cnn"] = meta
    if not args.no_kmer:
        lin = train_baseline(fa, ann, train, args.baseline_positions, args.seed)
        for item in test:
            results[item]["kmer_logistic"] = eval_baseline(lin, fa, ann, [tests[item]], features)
    if args.append and Path(args.output).is_file():
        old = json.loads(Path(args.output).read_text())
        if old["features"] != features or old["test_chroms"] != test:
            raise SystemExit(f"error: {args.output} has other features or test items; cannot --append")
        for item in test:
            results[item] = {**old["results"].get(item, {}), **results[item]}
        report = {**old, **report, "cnn": report.get("cnn", old.get("cnn"))}
    report["results"] = results
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))


def _fmt(v: float) -> str:
    return "nan" if v != v else (f"{v:.3f}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}")


def render(report: dict) -> str:
    """Markdown tables, one per test contig: MCC (at 0.5), AUPRC and AUROC per feature and model."""
    res = report["results"]
    if res and all(isinstance(v, dict) and "mcc" in v for v in res.values()):  # the older one-table layout
        return _table(report["features"], res)
    return "\n\n".join(f"**{chrom}**\n\n" + _table(report["features"], r) for chrom, r in res.items())


def _table(features: list[str], res: dict) -> str:
    names = list(res)
    lines = ["| feature | positives | " + " | ".join(f"{n} MCC / AUPRC / AUROC" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for f in features + ["(mean)"]:
        key = "" if f == "(mean)" else f"/{f}"
        fracs = [r[f"positive_fraction{key}"] for r in res.values() if f"positive_fraction{key}" in r]
        pos = _fmt(fracs[0] if fracs else float("nan")) if key else ""
        cells = [" / ".join(_fmt(res[n].get(m + key, float("nan"))) for m in ("mcc", "auprc", "auroc")) for n in names]
        lines.append(f"| {f} | {pos} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
