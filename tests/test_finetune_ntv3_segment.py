"""`ntk finetune segment` with NTv3 bases (the golden tiny pre/post-trained models, window unit 8): a per-base head
on the final per-base embedding; windows and labels aligned base for base (training: shifted and reverse-
complemented; evaluation: the kept centre); a planted motif learned well above chance; the checkpoint reloads
with ntk.load_model and `ntk segment -m` writes the model's own output on each window's kept centre; species and
window errors in one line."""
import json

import numpy as np
import pyBigWig
import pytest
import torch
from conftest import run_ntk

import ntk
from ntk.errors import CheckpointError, InputError, NtkError
from ntk.io.annotation import read_annotation
from ntk.io.fasta import IndexedFasta
from ntk.model.ntv3 import N_ID
from ntk.pipelines.family import NTv3Family
from ntk.pipelines.finetune import FinetuneOptions, build_ntv3_segment_model
from ntk.pipelines.finetune_segment import SegmentTaskInput, evaluate_windows, finetune_segment
from ntk.pipelines.segment import segment_genome
from ntk.train.finetune_data import WindowBatches, genome_windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MOTIF = "CGCGCGCGCGCG"  # 12 nt; the feature is "inside a planted copy"
ID = {"A": 6, "T": 7, "C": 8, "G": 9, "N": 10}
RC = str.maketrans("ACGT", "TGCA")


def planted_genome(d, seed=0, sizes=(("tr1", 12000), ("tr2", 12000), ("val", 4000), ("test", 4000))):
    """Random contigs with the motif planted every 60-200 nt; BED of the planted copies (feature ``motif``)."""
    rng = np.random.default_rng(seed)
    fa, bed = [], []
    for c, n in sizes:
        s = rng.choice(list("ACGT"), n)
        p = 20
        while p < n - 40:
            s[p:p + len(MOTIF)] = list(MOTIF)
            bed.append(f"{c}\t{p}\t{p + len(MOTIF)}\tmotif\n")
            p += int(rng.integers(60, 200))
        fa.append(f">{c}\n" + "".join(s) + "\n")
    (d / "g.fa").write_text("".join(fa))
    (d / "a.bed").write_text("".join(bed))
    return d / "g.fa", d / "a.bed"


def opts(model, **kw):
    base = dict(model=str(model), device="cpu", threads=1, quiet=True, batch_size=8, lr=1e-2, steps=60,
                eval_every=20, patience=0)
    base.update(kw)
    return FinetuneOptions(**base)


def bw_values(path, chrom, start, end):
    with pyBigWig.open(str(path)) as bw:
        return np.asarray(bw.values(chrom, start, end), dtype=np.float64)


def window_ids(seq, start, W):
    return torch.tensor([[ID[seq[p]] if 0 <= p < len(seq) else N_ID for p in range(start, start + W)]])


def test_planted_motif_is_learned_and_ntk_segment_gives_the_model_output(tmp_path, golden_dir):
    fa, bed = planted_genome(tmp_path)
    run = tmp_path / "run"
    rep = finetune_segment(SegmentTaskInput(str(fa), str(bed), ["motif"], val_chroms=["val"], test_chroms=["test"],
                                            window=256), run, opts(golden_dir / "ntv3_pre_tiny"))
    assert rep["window"] == 256 and rep["eval_crop"] == 32 and rep["keep_target_center_fraction"] == 0.75
    assert rep["split"]["train_windows"] > 0 and rep["monitor"] == "val_auprc"
    # an untrained head predicts nothing above 0.5 (MCC 0); 60 steps learn the motif: MCC 0.80 on the held-out
    # contigs here, and 0.5 leaves room for any float32 rounding of the training run on another machine
    assert rep["initial_test"]["mcc/motif"] < 0.2 and rep["test"]["mcc/motif"] > 0.5, (rep["initial_test"], rep["test"])
    assert rep["val"]["mcc"] > 0.5 and rep["test"]["loss"] < rep["initial_test"]["loss"] * 0.5
    assert rep["best_is_untrained"] is False
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["mcc/motif"] == pytest.approx(rep["test"]["mcc/motif"])

    # best/: a self-describing NTv3 checkpoint that reloads
    cfg = json.loads((run / "best" / "config.json").read_text())
    assert cfg["model_type"] == "ntv3" and cfg["ntk_head"] == "segment" and cfg["features"] == ["motif"]
    assert cfg["keep_target_center_fraction"] == 0.75 and cfg["segment_window"] == 256 and "ntk_species" not in cfg
    m = ntk.load_model(run / "best")
    assert m.features == ["motif"] and m.segment_head is not None and m.classifier is None
    ntk.save_model(m, tmp_path / "again")
    m2 = ntk.load_model(tmp_path / "again")

    # ntk segment -m best/: each window's kept centre is the model's own output on that window
    seq = IndexedFasta(fa).fetch("test")[:400]
    (tmp_path / "t.fa").write_text(">t\n" + seq + "\n")
    seg = segment_genome(tmp_path / "t.fa", tmp_path / "seg", model=m, window=64)
    fam = NTv3Family(m)
    assert (fam.margin(64), fam.kept(64)) == (8, 48) and seg.bp_scored == 400
    got = bw_values(tmp_path / "seg" / "motif.bw", "t", 0, 400)
    with torch.no_grad():
        for a in (0, 48, 336):  # kept centres [a, a + 48) of windows [a - 8, a + 56) (N outside the contig)
            want = m(window_ids(seq, a - 8, 64), heads="segment").segment_probabilities[0, 8:56, 0].numpy()
            np.testing.assert_allclose(got[a:a + 48], want, rtol=1e-6, atol=1e-7)
            again = m2(window_ids(seq, a - 8, 64)).segment_probabilities[0, 8:56, 0].numpy()
            np.testing.assert_array_equal(again, want)  # the same weights, the same computation
    segs = [ln.split("\t") for ln in __import__("gzip").open(tmp_path / "seg" / "segments.bed.gz", "rt")]
    assert segs and all(r[3] == "motif" for r in segs)


def test_windows_and_labels_align_base_for_base(tmp_path, golden_dir):
    rng = np.random.default_rng(3)
    seq = "".join(rng.choice(list("ACGT"), 3000))
    fa_path = tmp_path / "g.fa"
    fa_path.write_text(">c1\n" + seq + "\n")
    fa = IndexedFasta(fa_path)
    (tmp_path / "a.bed").write_text("c1\t1234\t1235\tx\n")  # one planted base
    ann = read_annotation(tmp_path / "a.bed", ["x"], fa.lengths)
    m = ntk.load_model(golden_dir / "ntv3_pre_tiny")
    w = genome_windows(fa, ["c1"], 256, 0, m.config.window_unit)
    wb = WindowBatches(fa, ann, w, m.tokenizer, batch_size=8, train=True, seed=1, rc_augment=True)
    seen = {"fwd": 0, "rc": 0}
    it = iter(wb)
    for _ in range(12):
        b = next(it)
        assert b["input_ids"].shape[1] == 256 and not (b["input_ids"] == m.tokenizer.pad_id).any()
        for ids, t in zip(b["input_ids"], b["targets"].numpy()[..., 0]):
            s = "".join(m.tokenizer.id_to_token(int(i)) for i in ids)  # one token per base
            pos, flip = seq.find(s), False
            if pos < 0:
                pos, flip = seq.find(s.translate(RC)[::-1]), True
            assert pos >= 0
            want = np.zeros(256, np.uint8)
            if pos <= 1234 < pos + 256:
                want[1234 - pos] = 1
                seen["rc" if flip else "fwd"] += 1
            np.testing.assert_array_equal(t[::-1] if flip else t, want)
    assert seen["fwd"] and seen["rc"]  # the planted base was met on both strands

    # evaluation: an oracle that calls feature "C" wherever the token is C scores MCC 1 exactly when every kept
    # base is compared with its own label; shifted by one base it scores about 0
    lines = [f"c1\t{i}\t{i + 1}\tC\n" for i, c in enumerate(seq) if c == "C"]
    (tmp_path / "c.bed").write_text("".join(lines))
    ann_c = read_annotation(tmp_path / "c.bed", ["C"], fa.lengths)
    seg_m = build_ntv3_segment_model(m, ["C"], keep_fraction=0.75)
    fam = NTv3Family(seg_m)
    ev = genome_windows(fa, ["c1"], 256, fam.margin(256), 8)
    kept = sorted(zip(ev.keep_start.tolist(), ev.keep_end.tolist()))
    assert kept[0][0] == 0 and kept[-1][1] == 3000 and all(a[1] == b[0] for a, b in zip(kept, kept[1:]))

    class Oracle:
        device = torch.device("cpu")

        def __init__(self, shift):
            self.shift = shift

        def __call__(self, ids, heads):
            is_c = torch.roll((ids == ID["C"]).float(), self.shift, dims=1)
            logits = torch.stack([-10 * is_c + 5, 10 * is_c - 5], -1)[:, :, None, :]
            return type("Out", (), {"segment_logits": logits})()

    assert evaluate_windows(Oracle(0), fa, ann_c, ev, m.tokenizer, 4, "none")["mcc/C"] == 1.0
    assert abs(evaluate_windows(Oracle(1), fa, ann_c, ev, m.tokenizer, 4, "none")["mcc/C"]) < 0.2


def test_cli_pre_and_post_bases_write_checkpoint_and_metrics(tmp_path, golden_dir):
    fa, bed = planted_genome(tmp_path, sizes=(("tr1", 3000), ("val", 1500), ("test", 1500)))
    common = ["finetune", "segment", "-f", fa, "-a", bed, "--features", "motif", "--val-chroms", "val",
              "--test-chroms", "test", "--window", "128", "--steps", "4", "--batch-size", "4", "--device", "cpu",
              "--threads", "1", "-q"]
    run_ntk(*common, "-m", golden_dir / "ntv3_pre_tiny", "-o", tmp_path / "pre", check=True)
    run_ntk(*common, "-m", golden_dir / "ntv3_post_tiny", "--species", "mouse", "--method", "ia3", "-o",
            tmp_path / "post", check=True)
    for name in ("pre", "post"):
        rep = json.loads((tmp_path / name / "metrics.json").read_text())
        assert rep["problem_type"] == "segmentation" and rep["steps"] == 4 and rep["window"] == 128
        assert set(rep["test"]) >= {"mcc", "auprc", "auroc", "loss", "mcc/motif", "auprc/motif"}
        assert rep["initial_val"] is not None and "best_is_untrained" in rep
        cfg = json.loads((tmp_path / name / "best" / "config.json").read_text())
        assert cfg["ntk_head"] == "segment" and cfg["features"] == ["motif"]
    post = json.loads((tmp_path / "post" / "metrics.json").read_text())
    assert post["species"] == "mouse" and post["keep_target_center_fraction"] == 0.375  # the base's own centre
    assert post["method"] == "ia3" and post["trainable_parameters"] < post["total_parameters"] // 3
    assert json.loads((tmp_path / "post" / "best" / "config.json").read_text())["ntk_adapter"]["method"] == "ia3"
    m = ntk.load_model(tmp_path / "post" / "best")
    assert m.config.finetune_species == "mouse" and m.config.bed_elements_names == ["exon", "intron", "splice_donor"]

    # ntk segment -m <post fine-tuned>: conditioned on its species without --species; window 64: margin 20,
    # kept 24 positions (the base's 0.375 centre)
    seq = IndexedFasta(fa).fetch("test")[:24]
    (tmp_path / "one.fa").write_text(">one\n" + seq + "\n")
    run_ntk("segment", tmp_path / "one.fa", "-m", tmp_path / "post" / "best", "--window", "64", "-o",
            tmp_path / "seg", "--device", "cpu", "--threads", "1", "-q", check=True)
    info = json.loads((tmp_path / "seg" / "run.json").read_text())
    assert info["model"]["species"] == "mouse" and info["options"]["features"] == ["motif"]
    with torch.no_grad():
        out = m(window_ids(seq, -20, 64), species_ids=m.species_id("mouse"), heads="segment")
    np.testing.assert_allclose(bw_values(tmp_path / "seg" / "motif.bw", "one", 0, 24),
                               out.segment_probabilities[0, 20:44, 0].numpy(), rtol=1e-6, atol=1e-7)
    # species errors of ntk segment
    with pytest.raises(NtkError, match="--species 'nope': not a species of this model"):
        segment_genome(tmp_path / "one.fa", tmp_path / "s2", model=m, species="nope", window=64)
    with pytest.raises(NtkError, match="not conditioned on a species"):
        segment_genome(tmp_path / "one.fa", tmp_path / "s3", model=str(tmp_path / "pre" / "best"), species="human",
                       window=64, device="cpu")


def test_species_and_window_errors(tmp_path, golden_dir):
    fa, bed = planted_genome(tmp_path, sizes=(("tr1", 600), ("val", 600)))
    inp = SegmentTaskInput(str(fa), str(bed), ["motif"], val_chroms=["val"], window=128)
    post, pre = golden_dir / "ntv3_post_tiny", golden_dir / "ntv3_pre_tiny"
    with pytest.raises(NtkError, match="--species is required.*choose from: human, mouse, arabidopsis"):
        finetune_segment(inp, tmp_path / "r", opts(post, steps=1))
    with pytest.raises(NtkError, match="unknown species 'nope'"):
        finetune_segment(inp, tmp_path / "r", opts(post, steps=1, species="nope"))
    with pytest.raises(NtkError, match="only NTv3 post-trained models are conditioned on a species"):
        finetune_segment(inp, tmp_path / "r", opts(pre, steps=1, species="human"))
    with pytest.raises(InputError, match="--window 100: must be a positive multiple of 8 nt"):
        finetune_segment(SegmentTaskInput(str(fa), str(bed), ["motif"], val_chroms=["val"], window=100),
                         tmp_path / "r", opts(pre, steps=1))
    with pytest.raises(InputError, match="--eval-crop: an NTv3 post-trained base keeps its own centre"):
        finetune_segment(SegmentTaskInput(str(fa), str(bed), ["motif"], val_chroms=["val"], window=128,
                                          eval_crop=16), tmp_path / "r", opts(post, steps=1, species="human"))
    assert not (tmp_path / "r").exists()
    p = run_ntk("finetune", "segment", "-f", fa, "-a", bed, "--features", "motif", "--val-chroms", "val",
                "--window", "128", "-m", post, "-o", tmp_path / "r2", "--device", "cpu")
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "ntk: error: --species is required" in p.stderr
    assert not (tmp_path / "r2").exists()


def test_segment_head_reuses_the_bed_head_rows_and_config_is_checked(tmp_path, golden_dir):
    base = ntk.load_model(golden_dir / "ntv3_post_tiny")
    m = build_ntv3_segment_model(base, ["intron", "new"], "human").eval()
    ids = window_ids("ACGTTGCAAGGCTTAACGTACGATCGATGCATGCAAATTTGGGCCCATATGCGCTAGCTAGGATCC", 0, 64)
    with torch.no_grad():
        want = base(ids, species_ids=base.species_id("human"))
        got = m(ids)  # conditioned on its ntk_species (human)
    s, e = want.crop
    # same weights, same computation: the fine-tuned head's "intron" equals the BED head's on the crop
    torch.testing.assert_close(got.segment_probabilities[0, s:e, 0], want.bed_probabilities[0, :, 1], rtol=0, atol=0)
    torch.testing.assert_close(got.bed_probabilities, want.bed_probabilities, rtol=0, atol=0)
    # config.json: the head's fields are validated when read (never silently ignored)
    ntk.save_model(m, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    for bad, msg in (({"features": []}, "needs 'features'"), ({"ntk_head": "other"}, "ntk_head 'other'"),
                     ({"ntk_head": None}, "'features' without ntk_head 'segment'")):
        d = {**cfg, **bad}
        if bad.get("ntk_head", 1) is None:
            d.pop("ntk_head")
        (tmp_path / "m" / "config.json").write_text(json.dumps(d))
        with pytest.raises(CheckpointError, match=msg):
            ntk.load_model(tmp_path / "m")
