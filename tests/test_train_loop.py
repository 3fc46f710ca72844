"""The shared training loop (ntk.train): schedules, masking, checkpoints, exact resume, interruption, early stop."""
from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

import ntk
from ntk.errors import NtkError
from ntk.model import NucleotideTransformer, preset_config
from ntk.model.tokenizer import NucleotideTokenizer
from ntk.train import TrainConfig, Trainer, TrainingInterrupted, latest_checkpoint, prepare_run_dir
from ntk.train.masking import IGNORE, bert_mask
from ntk.train.optim import lr_factor

from conftest import TRAIN_ULPS, assert_f32_close

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


# -- schedules ------------------------------------------------------------------------------------
def test_lr_schedules():
    # linear warm-up from the first step
    assert [lr_factor(s, "cosine", 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # cosine: full rate right after warm-up, half way at the middle of the decay, > 0 at the last step
    assert lr_factor(4, "cosine", 4, 20) == 1.0
    assert lr_factor(12, "cosine", 4, 20) == pytest.approx(0.5)
    assert 0 < lr_factor(19, "cosine", 4, 20) < 0.02
    assert lr_factor(19, "cosine", 4, 20, min_lr_ratio=0.1) > 0.1
    # inverse square root after warm-up (the Nucleotide Transformer recipe)
    assert lr_factor(15, "inverse_sqrt", 4, 100) == pytest.approx(math.sqrt(4 / 16))
    assert lr_factor(99, "constant", 4, 100) == 1.0
    with pytest.raises(ValueError):
        lr_factor(0, "linear", 0, 10)


# -- masking --------------------------------------------------------------------------------------
def test_bert_mask_statistics():
    tok = NucleotideTokenizer("v2")
    rng = np.random.default_rng(0)
    ids = rng.integers(tok.kmer_offset, tok.single_offset, size=(400, 500))
    ids[:, 0] = tok.cls_id
    ids[:, -50:] = tok.pad_id
    inputs, labels = bert_mask(ids, np.random.default_rng(1), tok.mask_id, tok.kmer_offset, tok.kmer_id_range)
    sel = labels != IGNORE
    regular = ids >= tok.kmer_offset
    assert not sel[~regular].any()  # <cls> and padding are never selected
    assert (inputs[~regular] == ids[~regular]).all()
    assert sel[regular].mean() == pytest.approx(0.15, abs=0.005)
    assert (labels[sel] == ids[sel]).all()
    n = sel.sum()
    as_mask = (inputs == tok.mask_id) & sel
    kept = (inputs == ids) & sel
    changed = sel & ~as_mask & ~kept
    assert as_mask.sum() / n == pytest.approx(0.8, abs=0.01)
    # a random replacement can draw the original token (1/4096): "kept" is 10% + a hair
    assert kept.sum() / n == pytest.approx(0.1, abs=0.01)
    assert changed.sum() / n == pytest.approx(0.1, abs=0.01)
    lo, hi = tok.kmer_id_range
    assert ((inputs[changed] >= lo) & (inputs[changed] < hi)).all()  # random tokens are 6-mers
    assert (inputs[~sel] == ids[~sel]).all()
    # reproducible from the generator
    again = bert_mask(ids, np.random.default_rng(1), tok.mask_id, tok.kmer_offset, tok.kmer_id_range)
    assert (again[0] == inputs).all() and (again[1] == labels).all()


# -- a tiny generic task ----------------------------------------------------------------------------
class Stream:
    """Resumable synthetic masked-LM batches: batch i is a function of i only."""

    def __init__(self, batch=4, length=24):
        self.i, self.batch, self.length = 0, batch, length

    def __iter__(self):
        return self

    def __next__(self):
        g = torch.Generator().manual_seed(1000 + self.i)
        self.i += 1
        ids = torch.randint(6, 4102, (self.batch, self.length), generator=g)
        ids[:, 0] = 3
        sel = torch.rand(ids.shape, generator=g) < 0.3
        sel[:, 0] = False
        labels = torch.where(sel, ids, torch.full_like(ids, IGNORE))
        return {"input_ids": torch.where(sel, torch.full_like(ids, 2), ids), "labels": labels}

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, d):
        self.i = d["i"]


def loss_fn(model, batch):
    logits = model(batch["input_ids"]).logits
    loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)
    return loss, {"tokens": batch["input_ids"].numel()}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = preset_config("tiny")
    cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads = 1, 32, 64, 2
    return NucleotideTransformer(cfg, lm_head=True)


def run(run_dir, steps=6, resume=False, stop_after=None, hook=None, plot=False, **kw):
    resume_from = prepare_run_dir(run_dir, "test", resume, force=not resume, options={"steps": steps})
    cfg = TrainConfig(steps=steps, lr=3e-3, warmup_steps=2, save_every=2, stop_after=stop_after, quiet=True,
                      plot=plot, **kw)
    lf = loss_fn if hook is None else hook
    t = Trainer(tiny_model(), cfg, run_dir, lf, Stream(), eval_fn=lambda m: {"val_loss": 1.0},
                resume_from=resume_from)
    return t.fit()


def losses(run_dir):
    df = pl.read_parquet(run_dir / "metrics.parquet").filter(pl.col("step") > 0)
    return dict(zip(df["step"].to_list(), df["loss"].to_list()))


def test_resume_is_exact_and_checkpoints_load(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(a, steps=6)
    s = run(b, steps=6, stop_after=3)
    assert s["stopped"] == "stop_after" and s["final"] is None
    assert latest_checkpoint(b).name == "step-00000003"
    s = run(b, steps=6, resume=True)
    assert s["step"] == 6 and s["final"] == b / "final"
    la, lb = losses(a), losses(b)
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert la[step] == lb[step], step  # bit-for-bit on CPU, the learning-rate schedule included
    fa = ntk.load_model(a / "final")
    fb = ntk.load_model(b / "final")
    for (k, va), vb in zip(fa.state_dict().items(), fb.state_dict().values()):
        assert torch.equal(va, vb), k
    # every checkpoint is an HF-layout model directory plus a weights_only-loadable trainer state
    ck = latest_checkpoint(b)
    m = ntk.load_model(ck)
    assert m(torch.tensor([[3, 10, 11, 12]])).logits.shape == (1, 4, 4107)
    state = torch.load(ck / "trainer_state.pt", weights_only=True)
    assert state["step"] == 6 and state["ranks"][0]["data"] == {"i": 6}
    assert len(list((b / "checkpoints").iterdir())) == 2  # keep_checkpoints
    assert json.loads((b / "run.json").read_text())["resumed"]


def test_sigterm_saves_a_checkpoint_then_resume_continues(tmp_path):
    def interrupting(model, batch):
        out = loss_fn(model, batch)
        if interrupting.calls == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. a cluster's preemption notice during the 4th step
        interrupting.calls += 1
        return out

    interrupting.calls = 0
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # SIGINT is SIG_IGN in CI
    with pytest.raises(TrainingInterrupted) as e:
        run(tmp_path / "r", steps=6, hook=interrupting)
    assert e.value.step == 4 and latest_checkpoint(tmp_path / "r").name == "step-00000004"
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    run(tmp_path / "r", steps=6, resume=True)
    run(tmp_path / "u", steps=6)
    assert losses(tmp_path / "r") == losses(tmp_path / "u")


def test_grad_accumulation_matches_one_large_batch(tmp_path):
    def lf(model, batch):  # every sequence has the same number of targets: mean of means == mean
        logits = model(batch["input_ids"]).logits[:, 1]
        return F.cross_entropy(logits, batch["labels"][:, 1].clamp_min(6)), {}

    finals = []
    for accum in (1, 2):
        torch.manual_seed(0)
        d = tmp_path / f"acc{accum}"
        # the large batches are two consecutive micro-batches concatenated
        small = Stream(batch=2)
        batches = [next(small) for _ in range(8)]
        if accum == 1:
            batches = [{k: torch.cat([batches[2 * i][k], batches[2 * i + 1][k]]) for k in batches[0]}
                       for i in range(4)]
        cfg = TrainConfig(steps=4, lr=1e-3, warmup_steps=0, grad_accum=accum, quiet=True, plot=False,
                          grad_clip=None)
        Trainer(tiny_model(), cfg, d, lf, iter(batches)).fit()
        finals.append(ntk.load_model(d / "final").state_dict())
    for k in finals[0]:
        # scale: the tensor's largest weight, or the learning rate for tensors near 0 (4 Adam steps move a weight
        # by up to ~4 lr whatever its size)
        scale = max(float(finals[1][k].abs().max()), 4 * 1e-3)
        assert_f32_close(finals[0][k], finals[1][k], TRAIN_ULPS, scale=scale, what=k)


def test_early_stopping_and_best_model(tmp_path):
    values = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8, 4.9, 5.0, 5.1])
    cfg = TrainConfig(steps=20, lr=1e-3, warmup_steps=0, eval_every=1, patience=2, save_best=True, quiet=True,
                      plot=False)
    s = Trainer(tiny_model(), cfg, tmp_path, loss_fn, Stream(), eval_fn=lambda m: {"val_loss": next(values)}).fit()
    # evals: step0=5.0, 1=4.0 (best), 2=4.5, 3=4.6 -> two without improvement
    assert s["stopped"] == "early_stop" and s["step"] == 3 and s["best"] == 4.0
    assert (tmp_path / "best" / "model.safetensors").is_file() and (tmp_path / "final").is_dir()


def test_run_directory_rules(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(NtkError, match="not written by ntk"):
        prepare_run_dir(foreign, "pretrain", resume=False, force=False, options={})
    with pytest.raises(NtkError, match="--resume needs a run directory written by ntk"):
        prepare_run_dir(foreign, "pretrain", resume=True, force=False, options={})
    prepare_run_dir(foreign, "pretrain", resume=False, force=True, options={})
    assert (foreign / "notes.txt").read_text() == "mine"  # --force removes only ntk's own entries
    with pytest.raises(NtkError, match="previous `ntk pretrain` run"):
        prepare_run_dir(foreign, "pretrain", resume=False, force=False, options={})
    with pytest.raises(NtkError, match="no complete checkpoint"):
        prepare_run_dir(foreign, "pretrain", resume=True, force=False, options={})
    with pytest.raises(NtkError, match="not `ntk finetune`"):
        prepare_run_dir(foreign, "finetune", resume=True, force=False, options={})
