"""`ntk pretrain`: the streaming corpus, the command line, exact resume, torchrun/DDP, errors."""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import ntk
from ntk.errors import InputError
from ntk.io.intervals import Interval
from ntk.model.tokenizer import NucleotideTokenizer, reverse_complement
from ntk.train.corpus import MaskedLMStream, WindowSampler, split_corpus, subtract
from ntk.train.masking import IGNORE

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "genome.fa.gz"
VENV_BIN = Path(sys.executable).parent
TOK = NucleotideTokenizer("v2")


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("genome")
    shutil.copy(SAMPLE, d / "genome.fa.gz")  # its .fai/.gzi are built here, never in data/
    return d / "genome.fa.gz"


def run_cli(args, capsys):
    """Run `ntk ...` in-process (imports shared between tests); return (exit code, stderr)."""
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


QUICK = ["--config", "tiny", "--seq-len", "32", "--tokens-per-batch", "256", "--warmup", "2", "--lr", "2e-3",
         "--val-windows", "16", "--eval-every", "2", "--save-every", "2", "-q"]


# -- the corpus ------------------------------------------------------------------------------------
def test_windows_are_uniform_over_bases_and_inside_intervals(genome):
    from ntk.io.fasta import IndexedFasta

    fa = IndexedFasta(genome)
    ivs = [Interval("I", 1000, 3000), Interval("III", 50_000, 56_000), Interval("VI", 0, 500)]  # VI: too short
    s = WindowSampler(fa, ivs, 600, "sample")
    assert [iv.chrom for iv in s.intervals] == ["I", "III"] and s.n_positions == 1401 + 5401
    rng = np.random.default_rng(0)
    draws = [s.draw(rng) for _ in range(20000)]
    in_iii = np.mean([c == "III" for c, _ in draws])
    assert in_iii == pytest.approx(5401 / 6802, abs=0.01)  # proportional to the number of start positions
    for c, st in draws:
        iv = ivs[0] if c == "I" else ivs[1]
        assert iv.start <= st and st + 600 <= iv.end
    starts = np.array([st for c, st in draws if c == "III"]) - 50_000
    hist = np.bincount(starts * 10 // 5401, minlength=10)
    assert hist.min() > 0.85 * hist.mean()  # flat over the interval
    c, st = draws[0]
    assert s.codes(c, st).shape == (600,)
    assert subtract([Interval("I", 0, 100)], [Interval("I", 10, 20), Interval("I", 15, 30), Interval("I", 90, 200)]) \
        == [Interval("I", 0, 10), Interval("I", 30, 90)]


def test_validation_is_held_out_from_training(genome, tmp_path):
    split = split_corpus([str(genome)], 378, val_chroms=["I"])
    assert {iv.chrom for s in split.train for iv in s.intervals} == {"III", "VI"}
    assert [iv.chrom for s in split.val for iv in s.intervals] == ["I"]
    bed = tmp_path / "val.bed"
    bed.write_text("III\t100000\t120000\n")
    from ntk.io.intervals import read_bed

    split = split_corpus([str(genome)], 378, val_regions=list(read_bed(str(bed))))
    train_iii = [iv for s in split.train for iv in s.intervals if iv.chrom == "III"]
    assert train_iii == [Interval("III", 0, 100000), Interval("III", 120000, train_iii[-1].end)]
    split = split_corpus([str(genome)], 378)  # default: a held-out tail of the longest contig
    (v,) = [iv for s in split.val for iv in s.intervals]
    total = sum(iv.length for s in split.train + split.val for iv in s.intervals)
    assert v.chrom == "III" and v.end == 316620 and v.length == max(4 * 378, int(np.ceil(0.01 * total)))
    assert all(iv.end <= v.start for s in split.train for iv in s.intervals if iv.chrom == "III")


def test_stream_is_deterministic_per_rank_and_resumable(genome):
    split = split_corpus([str(genome)], 6 * 31)
    make = lambda rank=0, seed=0: MaskedLMStream(split.train, TOK, 32, 4, seed=seed, rank=rank)  # noqa: E731
    a, b = make(), make()
    first = [next(a) for _ in range(3)]
    again = [next(b) for _ in range(3)]
    for x, y in zip(first, again):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(next(make(rank=1))["labels"], first[0]["labels"])  # each rank has its own stream
    assert not torch.equal(next(make(seed=1))["labels"], first[0]["labels"])
    c = make()
    c.load_state_dict(a.state_dict())
    assert all(torch.equal(next(c)[k], next(a)[k]) for k in first[0])
    x = first[0]
    assert x["input_ids"].shape == (4, 32) and x["input_ids"].dtype == torch.int64
    assert (x["input_ids"][:, 0] == TOK.cls_id).all() and (x["labels"][:, 0] == IGNORE).all()
    assert x["attention_mask"].all()  # N-free 6*(T-1) nt windows fill every token: no padding


def test_n_heavy_windows_are_skipped_and_rc_augmentation(tmp_path):
    rng = np.random.default_rng(0)
    ac = "".join(rng.choice(list("AC"), 3000))
    fa = tmp_path / "nrich.fa"
    fa.write_text(f">a\n{ac}{'N' * 3000}\n>n\n{'N' * 5000}\n")
    split = split_corpus([str(fa)], 6 * 31, val_frac=0)
    stream = MaskedLMStream(split.train, TOK, 32, 64, max_n_frac=0.0)
    n_id = TOK.token_to_id("N")
    for _ in range(3):
        assert not (next(stream)["labels"] == n_id).any() and not (stream.batch(0)["input_ids"] == n_id).any()
    ids = MaskedLMStream(split.train, TOK, 32, 64, max_n_frac=0.0, rc_aug=True).token_ids(rng, 64)
    # the corpus holds only A/C: 6-mers with G/T come from reverse-complemented windows, about half of them
    rc = np.array([any(set(TOK.id_to_token(i)) & {"G", "T"} for i in row[1:]) for row in ids])
    fwd = np.array([all(set(TOK.id_to_token(i)) <= {"A", "C"} for i in row[1:]) for row in ids])
    assert (rc ^ fwd).all() and 0.25 < rc.mean() < 0.75
    assert TOK.tokenize(reverse_complement("AACCCA"))[0][1] == TOK.token_to_id("TGGGTT")
    only_n = tmp_path / "n.fa"
    only_n.write_text(f">n\n{'N' * 5000}\n")
    with pytest.raises(InputError, match="no usable window"):
        MaskedLMStream(split_corpus([str(only_n)], 186, val_frac=0).train, TOK, 32, 4).check()


# -- the command -----------------------------------------------------------------------------------
def test_pretrain_resume_gives_the_same_losses_and_loadable_models(genome, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    code, err = run_cli(["pretrain", genome, "-o", a, "--steps", "5"] + QUICK, capsys)
    assert code == 0, err
    code, err = run_cli(["pretrain", genome, "-o", b, "--steps", "5", "--stop-after", "2"] + QUICK, capsys)
    assert code == 0, err
    assert not (b / "final").exists() and (b / "checkpoints" / "step-00000002").is_dir()
    code, err = run_cli(["pretrain", genome, "-o", b, "--steps", "5", "--resume"] + QUICK, capsys)
    assert code == 0, err
    ma = pl.read_parquet(a / "metrics.parquet")
    mb = pl.read_parquet(b / "metrics.parquet")
    assert ma["step"].to_list() == mb["step"].to_list() == [0, 1, 2, 3, 4, 5]
    for col in ("loss", "accuracy", "val_loss"):
        assert ma[col].to_list() == mb[col].to_list(), col  # identical, steps 3-5 included
    assert {"lr", "tokens", "tokens_per_s", "grad_norm", "val_perplexity", "val_unigram_loss"} <= set(ma.columns)
    assert (a / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    m = ntk.load_model(a / "final")
    m2 = ntk.load_model(b / "checkpoints" / "step-00000005")
    ids = m.tokenizer.encode(["ACGTACGTTTGACCA" * 8]).input_ids
    assert torch.equal(m(ids).logits, m2(ids).logits)
    assert m.config.architectures == ["EsmForMaskedLM"] and m.config.max_position_embeddings == 514


def test_pretrain_init_from_and_mixed_corpora(genome, tmp_path, capsys):
    other = tmp_path / "other.fa"
    rng = np.random.default_rng(1)
    other.write_text(">x\n" + "".join(rng.choice(list("ACGT"), 20000)) + "\n")
    code, err = run_cli(["pretrain", genome, other, "--weights", "1,1", "-o", tmp_path / "r", "--steps", "2",
                         "--val-chroms", "VI", "-R", _bed(tmp_path, "I\t0\t100000\nx\t0\t20000\n")] + QUICK, capsys)
    assert code == 0, err
    code, err = run_cli(["pretrain", genome, "--init-from", tmp_path / "r" / "final", "-o", tmp_path / "s",
                         "--steps", "2", "--seq-len", "32", "--tokens-per-batch", "256", "-q"], capsys)
    assert code == 0, err
    assert ntk.load_model(tmp_path / "s" / "final").config.fingerprint() == \
        ntk.load_model(tmp_path / "r" / "final").config.fingerprint()


def _bed(tmp_path, text):
    p = tmp_path / "regions.bed"
    p.write_text(text)
    return p


@pytest.mark.parametrize("extra, message", [
    (["--config", "huge"], "--config 'huge': neither a config.json file nor a preset"),
    (["--config", "tiny", "--seq-len", "600"], "--seq-len 600: must be between 8 and the model's 512 tokens"),
    (["--config", "tiny", "--schedule", "linear"], "--schedule 'linear'"),
    (["--config", "tiny", "-R", "BED:chrI\t0\t1000\n"], "contig 'chrI' is not in the FASTA"),
    (["--config", "tiny", "--val-chroms", "chrV"], "--val-chroms: contig 'chrV' is not in the FASTA"),
    (["--config", "tiny", "--weights", "1,2"], "--weights: 2 value(s) for 1 corpus"),
    (["--config", "tiny", "--resume"], "--resume needs a run directory written by ntk"),
])
def test_pretrain_errors_are_one_line(genome, tmp_path, capsys, extra, message):
    extra = [str(_bed(tmp_path, e[4:])) if e.startswith("BED:") else e for e in extra]
    code, err = run_cli(["pretrain", genome, "-o", tmp_path / "run", "--steps", "1", "-q"] + extra, capsys)
    assert code == 2 and err.count("\n") == 1 and "ntk: error:" in err and message in err, err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # nothing written


def test_pretrain_refuses_a_foreign_or_previous_run_dir(genome, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "thesis.tex").write_text("keep me")
    code, err = run_cli(["pretrain", genome, "-o", run_dir, "--steps", "1"] + QUICK, capsys)
    assert code == 2 and "not written by ntk" in err and "--force" in err
    code, err = run_cli(["pretrain", genome, "-o", run_dir, "--steps", "1", "--force"] + QUICK, capsys)
    assert code == 0, err
    assert (run_dir / "thesis.tex").read_text() == "keep me" and (run_dir / "final").is_dir()
    code, err = run_cli(["pretrain", genome, "-o", run_dir, "--steps", "1"] + QUICK, capsys)
    assert code == 2 and "previous `ntk pretrain` run" in err and "--resume" in err


def test_no_usable_window_subprocess(tmp_path):
    fa = tmp_path / "short.fa.gz"
    with gzip.open(fa, "wt") as f:
        f.write(">c1\nACGTACGTAC\n>c2\nNNNNNNNNNN\n")
    r = subprocess.run([VENV_BIN / "ntk", "pretrain", fa, "-o", tmp_path / "run", "--config", "tiny",
                        "--seq-len", "16"], capture_output=True, text=True, timeout=300)
    # (a plain-gzip FASTA is decompressed for indexing, which is logged first)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("ntk: error: no usable window") and "shorter than one window" in last
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_torchrun_two_ranks_stay_identical(genome, tmp_path):
    torchrun = VENV_BIN / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed in this environment")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-port", str(29500 + os.getpid() % 1000),
                        "-m", "ntk.cli.main", "pretrain", genome, "-o", tmp_path / "ddp", "--steps", "4"] + QUICK,
                       capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for step in (2, 4):
        state = torch.load(tmp_path / "ddp" / "checkpoints" / f"step-{step:08d}" / "trainer_state.pt",
                           weights_only=True)
        assert state["world_size"] == 2
        r0, r1 = state["ranks"]
        assert (r0["data"]["rank"], r1["data"]["rank"]) == (0, 1) and r0["data"]["index"] == r1["data"]["index"]
        assert torch.equal(r0["param_sums"], r1["param_sums"])  # DDP replicas identical, parameter by parameter
    rows = pl.read_parquet(tmp_path / "ddp" / "metrics.parquet").filter(pl.col("step") > 0)
    assert rows["tokens"].to_list() == [256.0] * 4  # --tokens-per-batch over both ranks: 2 x 4 x 32 tokens
    ntk.load_model(tmp_path / "ddp" / "final")
