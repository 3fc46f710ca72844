"""`ntk finetune classify` with its defaults on GUE tasks (DNABERT-2's benchmark), next to the k-mer baseline.

For each task: the GUE CSVs from ../shared/data/gue (read-only), subsampled with a fixed seed so that a run
takes a few minutes on a shared 2-core CPU; a `split` column (train/val/test) written to a table in the work
directory; then the real command, with nothing but its defaults (the embedded base model, full fine-tuning, the
measured lr/epochs/patience, validation-loss monitor, the k-mer baseline on by default for small data):

    ntk finetune classify TABLE --split-col split -o RUN [--threads N]

Splits: where GUE has a train file, train = a subsample of it and val = a subsample of dev; where it has none
(EMP/*, prom_300_all: the snapshot lacks them, see ../shared/data/gue/PROVENANCE.txt), dev is split 90/10 into
train and val. test = a subsample of GUE's test file (never seen in training or model selection).

Prints one Markdown row per task: sizes, the model's test MCC/AUROC, the k-mer baseline's, steps, seconds.
Published numbers are not computed here (see bench/RESULTS.md for the table with the DNABERT-2 paper's values).

    python bench/finetune_gue.py [--tasks EMP/H3,prom/prom_core_all] [--max-train 2000] [--max-test 1000]
                                 [--threads 1] [--work /tmp/ntk-gue]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
GUE = Path(os.environ.get("NTK_GUE", ROOT.parent / "shared" / "data" / "gue"))
if not GUE.is_dir():
    GUE = Path("/work/shared/data/gue")
DEFAULT_TASKS = "EMP/H3,EMP/H3K4me3,prom/prom_300_all,prom/prom_core_all"


def read(task: str, split: str) -> pl.DataFrame | None:
    p = GUE / task / f"{split}.csv.gz"
    return pl.read_csv(p).select("sequence", "label") if p.is_file() else None


def sample(df: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    if df.height <= n:
        return df
    idx = np.random.default_rng(seed).choice(df.height, n, replace=False)
    return df[np.sort(idx).tolist()]


def build_table(task: str, max_train: int, max_test: int, seed: int) -> tuple[pl.DataFrame, str]:
    train, dev, test = read(task, "train"), read(task, "dev"), read(task, "test")
    if train is not None:
        tr = sample(train, max_train, seed)
        va = sample(dev, max(100, max_train // 9), seed + 1)
        how = "train subsample / dev subsample"
    else:  # dev serves as the training set (PROVENANCE.txt)
        d = sample(dev, int(max_train / 0.9), seed)
        perm = np.random.default_rng(seed + 2).permutation(d.height)
        n_val = d.height // 10
        va, tr = d[np.sort(perm[:n_val]).tolist()], d[np.sort(perm[n_val:]).tolist()]
        how = "dev split 90/10"
    te = sample(test, max_test, seed + 3)
    table = pl.concat([tr.with_columns(split=pl.lit("train")), va.with_columns(split=pl.lit("val")),
                       te.with_columns(split=pl.lit("test"))])
    return table, how


def run_task(task: str, args) -> dict:
    work = Path(args.work) / task.replace("/", "_")
    work.mkdir(parents=True, exist_ok=True)
    table, how = build_table(task, args.max_train, args.max_test, args.seed)
    csv = work / "table.csv"
    table.write_csv(csv)
    cmd = [sys.executable, "-m", "ntk.cli.main", "finetune", "classify", str(csv), "--split-col", "split",
           "-o", str(work / "run"), "--force", "-q"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{task}: ntk finetune failed ({p.returncode}):\n{p.stderr}")
    m = json.loads((work / "run" / "metrics.json").read_text())
    base = (m.get("baseline") or {}).get("test") or {}
    return {"task": task, "how": how, "train": m["split"]["train"], "val": m["split"]["val"],
            "test": m["split"]["test"], "mcc": m["test"]["mcc"], "auroc": m["test"]["auroc"],
            "kmer_mcc": base.get("mcc"), "kmer_auroc": base.get("auroc"), "steps": m["steps"],
            "stopped": m["stopped"], "best_step": m["best_step"], "untrained": m["best_is_untrained"],
            "seconds": seconds, "command": " ".join(cmd[3:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--max-train", type=int, default=2000)
    ap.add_argument("--max-test", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/ntk-gue")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args()
    rows = []
    print("| task | split (train/val/test) | ntk test MCC | ntk test AUROC | k-mer MCC | k-mer AUROC | steps "
          "(stopped) | s |")
    print("|---|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        r = run_task(task, args)
        rows.append(r)
        flag = " (best = untrained head)" if r["untrained"] else ""
        print(f"| {task} | {r['train']}/{r['val']}/{r['test']} ({r['how']}) | {r['mcc']:.3f}{flag} | "
              f"{r['auroc']:.3f} | {r['kmer_mcc']:.3f} | {r['kmer_auroc']:.3f} | {r['steps']} ({r['stopped']}) | "
              f"{r['seconds']:.0f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
