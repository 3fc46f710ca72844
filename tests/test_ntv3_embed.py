"""ntk embed with NTv3: pooled final per-base embedding (N padding excluded), --layer (Transformer outputs, one
vector per block of 2^n bases), --pool none (one row per base), long records tiled, errors."""
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import ntk
from ntk.errors import NtkError
from ntk.pipelines.embed import embed_sequences

from conftest import run_ntk

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
POST = ROOT / "tests" / "data" / "golden" / "ntv3_post_tiny"
PRE = ROOT / "tests" / "data" / "golden" / "ntv3_pre_tiny"
ID = {"A": 6, "T": 7, "C": 8, "G": 9, "N": 10}


@pytest.fixture(scope="module")
def post():
    return ntk.load_model(POST)


@pytest.fixture(scope="module")
def pre():
    return ntk.load_model(PRE)


def run(m, seq, species=None, pad_to=None):
    L = pad_to or -(-len(seq) // 8) * 8
    ids = torch.tensor([[ID[c] for c in seq] + [10] * (L - len(seq))])
    with torch.inference_mode():
        return m(ids, species_ids=None if species is None else m.species_id(species), output_hidden_states=True)


def emb(df, col="embedding"):
    return np.stack(df[col].to_list())


def test_pooled_final_embedding_excludes_padding(post, pre):
    seqs = ["ACGTTGCAAC", "GATTACAGATTACANNNACGT"]  # 10 and 21 nt: padded with N to 16 and 24
    df = embed_sequences(post, seqs, species="mouse")
    for i, s in enumerate(seqs):
        want = run(post, s, "mouse").embedding[0, :len(s)].mean(0).numpy()
        np.testing.assert_allclose(emb(df)[i], want, rtol=1e-5, atol=1e-6)
    df = embed_sequences(pre, seqs, pool="max")
    np.testing.assert_allclose(emb(df)[1], run(pre, seqs[1]).embedding[0, :21].amax(0).numpy(), rtol=1e-6)
    assert df["n_tokens"].to_list() == [10, 21]


def test_transformer_layers_and_pool_none(pre):
    s = "ACGTACGTTTGACCAGTA"  # 18 nt -> 24 with padding; 3 blocks of 8
    out = run(pre, s)
    df = embed_sequences(pre, [s], layers=[1, -1])
    assert df.columns[-2:] == ["embedding_layer1", "embedding_layer2"]
    per_base = out.hidden_states[1][0].repeat_interleave(8, dim=0)[:18]
    np.testing.assert_allclose(emb(df, "embedding_layer1")[0], per_base.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb(df, "embedding_layer2")[0],
                               out.after_transformer_embedding[0].repeat_interleave(8, 0)[:18].mean(0).numpy(),
                               rtol=1e-5, atol=1e-6)
    rows = embed_sequences(pre, [s], pool="none")
    assert rows.height == 18 and rows["nt_start"].to_list() == list(range(18))
    assert rows["nt_end"].to_list() == list(range(1, 19)) and rows["token_index"].to_list() == list(range(18))
    np.testing.assert_allclose(emb(rows), out.embedding[0, :18].numpy(), rtol=1e-5, atol=1e-6)


def test_long_record_is_tiled(post):
    rng = np.random.default_rng(2)
    s = "".join(rng.choice(list("ACGT"), 150))
    rows = embed_sequences(post, [s], species="human", pool="none", window=64, crop=8)
    assert rows.height == 150
    # windows of 64 every 48 nt; the first owns [0, 56), blended with the next across [48, 64) (pool none)
    first = run(post, s[:64], "human").embedding[0].numpy()
    np.testing.assert_allclose(emb(rows)[:48], first[:48], rtol=1e-5, atol=1e-6)
    last = run(post, s[-64:], "human").embedding[0].numpy()  # the last window ends at the record end
    np.testing.assert_allclose(emb(rows)[-20:], last[-20:], rtol=1e-5, atol=1e-6)
    # pooled: the mean over each window's kept part (no blending), so it lies within the per-base rows' range
    pooled = emb(embed_sequences(post, [s], species="human", window=64, crop=8))[0]
    second = run(post, s[48:112], "human").embedding[0].numpy()
    want = np.concatenate([first[:56], second[8:51], last[13:]]).mean(0)  # kept [0,56) [56,99) [99,150)
    np.testing.assert_allclose(pooled, want, rtol=1e-5, atol=1e-6)


def test_errors(post, pre):
    with pytest.raises(NtkError, match="choose one of: human, mouse, arabidopsis"):
        embed_sequences(post, ["ACGT"])
    with pytest.raises(NtkError, match="no CLS"):
        embed_sequences(pre, ["ACGT"], pool="cls")
    with pytest.raises(NtkError, match="cannot be combined"):
        embed_sequences(pre, ["ACGT"], layers=["final", 1])
    with pytest.raises(NtkError, match="out of range"):
        embed_sequences(pre, ["ACGT"], layers=[5])
    with pytest.raises(NtkError, match="multiple of 8"):
        embed_sequences(pre, ["ACGT"], window=60)


def test_cli(tmp_path, post):
    fa = tmp_path / "s.fa"
    fa.write_text(">a\nACGTACGTAA\n>b\nNNNN\n>c\nGGGCCCAAATTT\n")
    p = run_ntk("embed", fa, "-m", POST, "--species", "arabidopsis", "-o", tmp_path / "e.parquet", "-q")
    assert p.returncode == 0, p.stderr
    df = pl.read_parquet(tmp_path / "e.parquet")
    assert df["status"].to_list() == ["ok", "all_n", "ok"] and df["embedding"][1] is None
    want = run(post, "GGGCCCAAATTT", "arabidopsis").embedding[0, :12].mean(0).numpy()
    np.testing.assert_allclose(np.asarray(df["embedding"][2].to_list()), want, rtol=1e-5, atol=1e-6)
    meta = pl.read_parquet_metadata(tmp_path / "e.parquet")
    assert meta["species"] == "arabidopsis" and meta["layers"] == "final" and meta["embedding_dim"] == "24"
    p = run_ntk("embed", fa, "-m", POST, "-o", tmp_path / "f.parquet")
    assert p.returncode == 2 and "--species is required" in p.stderr and not (tmp_path / "f.parquet").exists()


def test_finetune_classify_and_predict_cli_with_ntv3(tmp_path):
    fa = tmp_path / "lab.fa"
    fa.write_text("".join(f">r{i} label={i % 2}\nACGTACGTAAAC\n" for i in range(20)))
    p = run_ntk("finetune", "classify", fa, "-m", PRE, "-o", tmp_path / "run", "--steps", "1", "--device", "cpu",
                "--quiet")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "run" / "best" / "config.json").is_file()
    p = run_ntk("predict", tmp_path / "run", fa, "-o", tmp_path / "p.parquet", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert pl.read_parquet(tmp_path / "p.parquet").height == 20
    p = run_ntk("predict", PRE, fa, "-o", tmp_path / "q.parquet", "--device", "cpu")
    assert p.returncode != 0 and "without a fine-tuned sequence head" in p.stderr
