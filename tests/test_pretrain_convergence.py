"""`ntk pretrain` learns: on the sample yeast genome the held-out validation loss falls well below its starting
value and below the context-free baseline (the loss of predicting every masked token from the training corpus's
6-mer frequencies), which the test computes itself from whole chromosomes with pysam, independently of ntk's
corpus code. About a minute on 2 CPU cores (longer on a loaded machine)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pysam
import torch

import ntk
from ntk.model.tokenizer import NucleotideTokenizer
from ntk.pipelines.pretrain import PretrainOptions, pretrain

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample" / "genome.fa.gz"


def unigram_cross_entropy(fasta: Path, train: list[str], val: list[str]) -> float:
    """Cross-entropy (nats) of the validation chromosomes' 6-mer tokens under the training chromosomes' token
    frequencies (add-one smoothed over the 4096 6-mers)."""
    tok = NucleotideTokenizer("v2")
    lo, hi = tok.kmer_id_range
    with pysam.FastaFile(str(fasta)) as fa:
        def tokens(names):
            ids = np.concatenate([tok.tokenize(fa.fetch(n).upper())[0][1:] for n in names])
            return ids[(ids >= lo) & (ids < hi)] - lo
        counts = np.bincount(tokens(train), minlength=hi - lo) + 1.0
        p = counts / counts.sum()
        return float(-np.log(p[tokens(val)]).mean())


def test_validation_loss_falls_below_start_and_unigram_baseline(tmp_path):
    genome = tmp_path / "genome.fa.gz"
    shutil.copy(SAMPLE, genome)
    baseline = unigram_cross_entropy(genome, ["III", "VI"], ["I"])
    # the `tiny` preset (2 layers x 64), 128-token windows, 4,096 tokens per step, 220 steps: 0.9 M tokens
    opts = PretrainOptions(config="tiny", seq_len=128, tokens_per_batch=4096, steps=220, lr=2e-3, warmup=20,
                           schedule="cosine", val_chroms=["I"], val_windows=256, eval_every=0, save_every=0,
                           seed=0, device="cpu", quiet=True, threads=1)
    threads = torch.get_num_threads()
    try:  # one thread: steady speed on a shared machine (two threads stall whenever the other core is busy)
        s = pretrain([str(genome)], tmp_path / "run", opts)
    finally:
        torch.set_num_threads(threads)
    evals = pl.read_parquet(tmp_path / "run" / "metrics.parquet").filter(pl.col("val_loss").is_not_null())
    start, end = evals["val_loss"][0], evals["val_loss"][-1]
    same_targets = evals["val_unigram_loss"][-1]  # ntk's own baseline on exactly the validation targets
    print(f"val loss {start:.4f} -> {end:.4f} (<mask> positions: {evals['val_masked_loss'][0]:.4f} -> "
          f"{evals['val_masked_loss'][-1]:.4f}); unigram baseline {baseline:.4f} (test), {same_targets:.4f} (ntk); "
          f"{s['tokens_seen']:,.0f} tokens in {s['elapsed_s']:.0f} s")
    assert evals["step"].to_list() == [0, 220]
    assert abs(same_targets - baseline) < 0.03  # two estimates of the same quantity
    assert start > baseline + 0.05  # an untrained model is worse than the context-free baseline
    assert end < start - 0.1  # well below the starting value
    assert end < baseline - 0.03 and end < same_targets - 0.03  # and clearly below the context-free baseline
    # at the positions shown as <mask> only, this short run reaches about the baseline (8.34 -> 8.14): the gain
    # over it comes from the visible selected tokens (10% kept, 10% random) of the BERT objective
    masked = evals["val_masked_loss"]
    assert masked[-1] < masked[0] - 0.15 and masked[-1] < same_targets + 0.02
    assert ntk.load_model(tmp_path / "run" / "final").config.num_hidden_layers == 2
