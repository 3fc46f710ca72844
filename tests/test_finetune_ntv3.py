"""`ntk finetune classify|regress` with an NTv3 base (the golden tiny pre/post-trained models): the pooled final
per-base embedding (N padding excluded) -> sequence head; best/ reloads with ntk.load_model and `ntk predict`
reproduces the fine-tuned model's outputs; LoRA/IA3 adapters (merged == unmerged); one-line refusals (species, adapter targets).
`ntk finetune segment` with NTv3: test_finetune_ntv3_segment.py."""
import json

import numpy as np
import polars as pl
import pytest
import torch
from conftest import run_ntk

import ntk
from ntk.errors import NtkError
from ntk.model.ntv3 import N_ID
from ntk.pipelines.finetune import FinetuneOptions, SequenceTaskInput, finetune_sequences
from ntk.pipelines.predict import predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MOTIF = "CGCGCGCGCGCGCGCG"  # 16 nt: learnable by the tiny random-weight U-Net in a few dozen steps


def opts(model, **kw):
    base = dict(model=str(model), batch_size=16, lr=3e-3, device="cpu", threads=1, quiet=True, baseline="none",
                epochs=4, eval_every=10, patience=0)
    base.update(kw)
    return FinetuneOptions(**base)


def motif_rows(n, seed, rng_len=(40, 70)):
    """Variable lengths (not multiples of the window unit 8, so every batch is N-padded), motif in half."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for i in range(n):
        s = rng.choice(list("ACGT"), int(rng.integers(*rng_len)))
        if i % 2:
            p = rng.integers(0, len(s) - len(MOTIF))
            s[p:p + len(MOTIF)] = list(MOTIF)
        seqs.append("".join(s))
        labels.append("motif" if i % 2 else "background")
    return seqs, labels


def test_classify_pre_tiny_learns_saves_and_predicts(tmp_path, golden_dir):
    seqs, labels = motif_rows(160, seed=0)
    pl.DataFrame({"sequence": seqs, "label": labels}).write_csv(tmp_path / "motif.csv")
    run = tmp_path / "run"
    rep = finetune_sequences("classify", SequenceTaskInput(path=str(tmp_path / "motif.csv")), run,
                             opts(golden_dir / "ntv3_pre_tiny", lr=1e-2, epochs=6))
    assert rep["problem_type"] == "single_label_classification" and rep["labels"] == ["background", "motif"]
    rows = pl.read_parquet(run / "metrics.parquet")
    losses = rows["loss"].drop_nulls().to_numpy()
    k = max(3, len(losses) // 4)
    assert losses[-k:].mean() < losses[:k].mean() * 0.6, losses  # training loss decreases (0.67 -> 0.21 seen)
    assert rep["val"]["loss"] < rep["initial_val"]["loss"] * 0.6 and rep["val"]["mcc"] > 0.5
    cfg = json.loads((run / "best" / "config.json").read_text())
    assert cfg["model_type"] == "ntv3" and cfg["num_labels"] == 2 and "ntk_species" not in cfg

    m = ntk.load_model(run / "best")
    assert m.classifier is not None and m.config.problem_type == "single_label_classification"
    new, _ = motif_rows(37, seed=5)
    pl.DataFrame({"sequence": new}).write_csv(tmp_path / "new.csv")
    predict(str(run), str(tmp_path / "new.csv"), str(tmp_path / "pred.parquet"), batch_size=8)
    pred = pl.read_parquet(tmp_path / "pred.parquet")
    assert pred.columns == ["name", "length", "pred_label", "prob_background", "prob_motif"]
    # in-memory reference: each sequence alone, padded with N to a multiple of 8, pooled over its own bases
    with torch.no_grad():
        want = []
        for s in new:
            L = -(-len(s) // 8) * 8
            ids = torch.full((1, L), N_ID, dtype=torch.long)
            ids[0, :len(s)] = torch.from_numpy(m.tokenizer.tokenize(s)[0])
            mask = torch.zeros(1, L, dtype=torch.bool)
            mask[0, :len(s)] = True
            want.append(torch.softmax(m(input_ids=ids, attention_mask=mask, heads="classifier").logits, -1)[0])
        want = torch.stack(want).numpy()
    got = pred.select(["prob_background", "prob_motif"]).to_numpy()
    # predict batches only records of the same padded length, so each row is the record run alone
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_padding_is_excluded_from_pooling(golden_dir, tmp_path):
    from ntk.pipelines.finetune import build_ntv3_task_model

    base = ntk.load_model(golden_dir / "ntv3_pre_tiny")
    m = build_ntv3_task_model(base, ["a", "b"], "single_label_classification").eval()
    s = "ACGTTGCAAC" * 3 + "ACG"  # 33 nt
    ids = torch.from_numpy(m.tokenizer.tokenize(s)[0])
    padded = torch.cat([ids, torch.full((7,), N_ID)])[None]
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[0, :33] = True
    with torch.no_grad():
        emb = m(padded, heads=False).embedding[0, :33].mean(0)
        head = m.classifier
        want = head.out_proj(torch.tanh(head.dense(emb)))
        got = m(input_ids=padded, attention_mask=mask, heads="classifier").logits[0]
        everything = m(input_ids=padded, heads="classifier").logits[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(everything, want, atol=1e-4)  # the mask matters


def test_regress_post_tiny_with_species(tmp_path, golden_dir):
    base = ntk.load_model(golden_dir / "ntv3_post_tiny")
    species = base.config.species[0]
    rng = np.random.default_rng(1)
    seqs, gc = [], []
    for _ in range(80):
        g = rng.uniform(0.2, 0.8)
        s = rng.choice(list("ACGT"), int(rng.integers(30, 60)), p=[(1 - g) / 2, g / 2, g / 2, (1 - g) / 2])
        seqs.append("".join(s))
        gc.append(float(np.isin(s, ["G", "C"]).mean()))
    pl.DataFrame({"sequence": seqs, "gc": gc}).write_csv(tmp_path / "gc.csv")
    inp = SequenceTaskInput(path=str(tmp_path / "gc.csv"), label_cols=["gc"])
    with pytest.raises(NtkError, match="--species is required.*choose from"):
        finetune_sequences("regress", inp, tmp_path / "r0", opts(golden_dir / "ntv3_post_tiny"))
    with pytest.raises(NtkError, match="unknown species"):
        finetune_sequences("regress", inp, tmp_path / "r0", opts(golden_dir / "ntv3_post_tiny", species="nope"))
    run = tmp_path / "run"
    rep = finetune_sequences("regress", inp, run, opts(golden_dir / "ntv3_post_tiny", species=species, epochs=2))
    assert rep["problem_type"] == "regression" and np.isfinite(rep["val"]["mse"])
    m = ntk.load_model(run / "best")
    assert m.config.finetune_species == species and m.config.extra["regression_std"]
    predict(str(run), str(tmp_path / "gc.csv"), str(tmp_path / "p.parquet"), batch_size=8)
    got = pl.read_parquet(tmp_path / "p.parquet")["pred_gc"].to_numpy()
    from ntk.pipelines.predict import sequence_outputs
    ids = [m.tokenizer.tokenize(s)[0] for s in seqs]
    np.testing.assert_allclose(got, sequence_outputs(m, ids, 8, N_ID)[:, 0], rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # each record alone == its predict row (target units: compare relative to their scale)
        for i in (0, 7, 41):
            one = m(input_ids=torch.from_numpy(np.concatenate([ids[i], np.full(-len(ids[i]) % 8, N_ID)]))[None],
                    attention_mask=torch.arange(-(-len(ids[i]) // 8) * 8)[None] < len(ids[i]),
                    heads="classifier").logits[0, 0]
            assert abs(float(one) - got[i]) <= 1e-5 * max(1.0, abs(got[i]))
    assert np.abs(got - np.mean(gc)).max() < 1.0  # in target units (de-standardised)


def test_ntv3_refusals(tmp_path, golden_dir):
    seqs, labels = motif_rows(20, seed=0)
    pl.DataFrame({"sequence": seqs, "label": labels}).write_csv(tmp_path / "m.csv")
    inp = SequenceTaskInput(path=str(tmp_path / "m.csv"))
    with pytest.raises(NtkError, match="only NTv3 post-trained"):
        finetune_sequences("classify", inp, tmp_path / "r", opts(golden_dir / "ntv3_pre_tiny", species="x"))
    assert not (tmp_path / "r").exists()
    r = run_ntk("finetune", "classify", tmp_path / "m.csv", "-o", tmp_path / "r2", "-m", golden_dir / "ntv3_pre_tiny",
                "--method", "lora", "--lora-targets", "query,nope", "--device", "cpu")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "ntk: error: --method lora: unknown adapter target 'nope'" in r.stderr


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_ntv3_adapters_merged_equal_unmerged(tmp_path, golden_dir, method):
    """LoRA/IA3 on the NTv3 Transformer blocks: an unmerged checkpoint (config.json ntk_adapter + adapter tensors)
    reloads with the adapters folded in, and its outputs equal those of the adapted model."""
    from conftest import MERGE_ULPS, assert_f32_close

    from ntk.model.adapters import ADAPTER_KEY, adapter_parameters, has_adapters
    from ntk.pipelines.finetune import build_ntv3_segment_model, setup_method

    base = ntk.load_model(golden_dir / "ntv3_post_tiny")
    m = build_ntv3_segment_model(base, ["exon", "new"], "human")
    targets = "query,key,value,attn_out,ffn_in,ffn_out"
    params = setup_method(m, FinetuneOptions(method=method, lora_targets=targets, ia3_targets=targets))
    adapters = adapter_parameters(m)
    n_layers = base.config.num_layers
    assert len(adapters) == n_layers * 6 * (2 if method == "lora" else 1)
    trained = {id(p) for _, p in params}
    assert all(id(p) in trained for p in adapters) and len(params) == len(adapters) + 4  # + segment head
    assert sum(p.numel() for _, p in params) < m.num_parameters() // 3
    torch.manual_seed(1)
    with torch.no_grad():  # move the adapters away from their identity start
        for p in adapters:
            p.add_(torch.randn_like(p) * 0.2)
    rng = np.random.default_rng(2)
    ids = torch.tensor([[6 + int(i) for i in rng.integers(0, 4, 64)]])
    m.eval()
    with torch.no_grad():
        want = m(ids)
        plain = base(ids, species_ids=base.species_id("human"))
    assert not torch.allclose(want.embedding, plain.embedding, atol=1e-3)  # the adapters change the output
    ntk.save_model(m, tmp_path / "unmerged")
    cfg = json.loads((tmp_path / "unmerged" / "config.json").read_text())
    assert cfg[ADAPTER_KEY]["method"] == method
    again = ntk.load_model(tmp_path / "unmerged")
    assert not has_adapters(again) and ADAPTER_KEY not in again.config.extra
    with torch.no_grad():
        got = again(ids)
    # mathematically equal, the adapter folded into the weights (one rounding per adapted layer): MERGE_ULPS
    assert_f32_close(got.segment_logits, want.segment_logits, MERGE_ULPS, what="segment logits")
    assert_f32_close(got.embedding, want.embedding, MERGE_ULPS, what="embedding")
    assert_f32_close(got.bigwig_tracks_logits, want.bigwig_tracks_logits, MERGE_ULPS, what="tracks")


def test_ntv3_lora_classify_with_merge(tmp_path, golden_dir):
    seqs, labels = motif_rows(40, seed=3)
    pl.DataFrame({"sequence": seqs, "label": labels}).write_csv(tmp_path / "m.csv")
    run = tmp_path / "run"
    rep = finetune_sequences("classify", SequenceTaskInput(path=str(tmp_path / "m.csv")), run,
                             opts(golden_dir / "ntv3_pre_tiny", method="lora", merge=True, epochs=None, steps=3))
    assert rep["method"] == "lora" and rep["trainable_parameters"] < rep["total_parameters"] // 3
    cfg = json.loads((run / "best" / "config.json").read_text())
    assert "ntk_adapter" not in cfg and cfg["num_labels"] == 2  # --merge: a plain checkpoint
    m = ntk.load_model(run / "best")
    assert m.classifier is not None
