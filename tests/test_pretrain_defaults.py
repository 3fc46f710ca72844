"""`ntk pretrain` defaults that learn at any run length: warm-up proportional to the run, the learning rate by
model size, the schedule printed at the start, a warning when a schedule cannot reach its peak rate; a 60-step
smoke run with the default schedule visibly learns (a few seconds on one CPU thread)."""
from __future__ import annotations

import re
import sys

import numpy as np
import polars as pl
import pytest

from ntk.train.optim import default_pretrain_lr, default_warmup, lr_factor, schedule_warning

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def run_cli(args, capsys):
    from ntk.cli.main import main

    old = sys.argv
    sys.argv = ["ntk"] + [str(a) for a in args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def flat(err: str) -> str:
    """stderr as one line: rich's wrapping and its `file.py:NNN` log-location column removed."""
    return " ".join(w for w in err.split() if not re.fullmatch(r"\S+\.py:\d+", w))


def repetitive_corpus(path, n_contigs=2, length=30_000, seed=0):
    """Tandem copies of one random 97-nt unit (about 1% of the bases mutated): 97 coprime with 6, so every
    tokenisation frame occurs and about a hundred distinct 6-mers make up most of the corpus."""
    rng = np.random.default_rng(seed)
    unit = rng.choice(list("ACGT"), 97)
    with open(path, "w") as f:
        for c in range(n_contigs):
            s = np.resize(unit, length).copy()
            hit = rng.random(length) < 0.01
            s[hit] = rng.choice(list("ACGT"), int(hit.sum()))
            f.write(f">r{c}\n" + "".join(s) + "\n")


def test_default_warmup_and_lr_follow_run_length_and_model_size():
    assert default_warmup(60) == 3 and default_warmup(1000) == 50 and default_warmup(10**6) == 1000
    assert default_warmup(5) == 0  # tiny runs start at the peak rate
    assert default_pretrain_lr(400_000) == 1e-3  # tiny
    assert default_pretrain_lr(50_000_000) == 3e-4
    assert default_pretrain_lr(500_000_000) == 1e-4  # the NT recipe
    assert default_pretrain_lr(2_500_000_000) < 1e-4
    # with the defaults, a 60-step cosine run reaches its peak rate at step 3
    w = default_warmup(60)
    assert lr_factor(w - 1, "cosine", w, 60) == 1.0
    assert schedule_warning("cosine", w, 60, 1e-3) is None
    # the old fixed warm-up of 1000 steps never reaches the peak in a 60-step run: a warning says so
    msg = schedule_warning("cosine", 1000, 60, 1e-4)
    assert "never reaches" in msg and "6.00e-06" in msg


def test_60_step_tiny_run_with_default_schedule_lowers_validation_loss_by_20_percent(tmp_path, capsys):
    fa = tmp_path / "rep.fa"
    repetitive_corpus(fa)
    # default --lr, --warmup, --schedule, --weight-decay; short windows and batches keep it to seconds
    code, err = run_cli(["pretrain", fa, "-o", tmp_path / "run", "--config", "tiny", "--steps", "60",
                         "--seq-len", "64", "--tokens-per-batch", "1024", "--val-windows", "32", "--threads", "1",
                         "--device", "cpu"], capsys)
    assert code == 0, err
    text = flat(err)
    assert "schedule: cosine: linear warm-up over 3 of 60 steps to peak lr 1.00e-03" in text
    assert "lr: default for" in text and "warm-up: default 5% of --steps" in text
    assert "warning" not in text
    ev = pl.read_parquet(tmp_path / "run" / "metrics.parquet").filter(pl.col("val_loss").is_not_null())
    start, end = ev["val_loss"][0], ev["val_loss"][-1]
    assert ev["step"].to_list()[-1] == 60
    assert end <= 0.8 * start, (start, end)
    rows = pl.read_parquet(tmp_path / "run" / "metrics.parquet").filter(pl.col("lr").is_not_null())
    lr, steps = rows["lr"].to_list(), rows["step"].to_list()
    assert max(lr) == pytest.approx(1e-3) and steps[lr.index(max(lr))] == 3  # the 3rd update is at the peak


def test_a_schedule_that_cannot_reach_its_peak_is_warned_about(tmp_path, capsys):
    fa = tmp_path / "rep.fa"
    repetitive_corpus(fa, length=8_000)
    code, err = run_cli(["pretrain", fa, "-o", tmp_path / "run", "--config", "tiny", "--steps", "4", "--warmup",
                         "10", "--seq-len", "32", "--tokens-per-batch", "128", "--val-windows", "4", "--threads", "1",
                         "--device", "cpu", "-q"], capsys)
    assert code == 0, err
    text = flat(err)
    assert "warning: warm-up (10 steps) is as long as the run (4 steps)" in text and "never reaches" in text
