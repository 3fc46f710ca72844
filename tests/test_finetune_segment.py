"""`ntk finetune segment` on the yeast sample: targets from the real annotation, held-out chromosomes, a
SegmentNT-type checkpoint that `ntk.load_model` and `ntk segment` run, better held-out MCC than the untrained
head; windows never contain N and are never padded; clear errors."""
import gzip
import json
import re

import numpy as np
import pytest
import torch
from conftest import assert_f32_close, run_ntk

import ntk
from ntk.errors import InputError
from ntk.io.annotation import read_annotation
from ntk.io.fasta import IndexedFasta
from ntk.model.config import preset_config
from ntk.model.nt import NucleotideTransformer
from ntk.pipelines.finetune import FinetuneOptions
from ntk.pipelines.finetune_segment import SegmentTaskInput, finetune_segment
from ntk.train.finetune_data import WindowBatches, genome_windows


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A tiny model whose 6-mer token embeddings spell out their bases (one-hot per position in the first 24
    dimensions, the other 40 random at 1/10 scale). A random-weight model knows nothing about what a token
    contains; a pretrained NT does, and that is what fine-tuning builds on. Everything else stays random."""
    torch.manual_seed(0)
    m = NucleotideTransformer(preset_config("tiny"))
    lo, hi = m.tokenizer.kmer_id_range
    with torch.no_grad():
        E = m.esm.embeddings.word_embeddings.weight
        E[lo:hi, :24] = 0
        E[:, 24:] *= 0.1
        for i in range(lo, hi):
            for p, b in enumerate(m.tokenizer.id_to_token(i)):
                E[i, p * 4 + "ACGT".index(b)] = 1.0
    d = tmp_path_factory.mktemp("seg") / "base"
    ntk.save_model(m, d)
    return d


def test_segment_finetune_improves_heldout_mcc_and_runs_in_ntk_segment(tmp_path, base_model, sample_dir):
    run = tmp_path / "run"
    features = ["protein_coding_gene", "exon", "intron", "splice_donor", "splice_acceptor"]
    rep = finetune_segment(
        SegmentTaskInput(str(sample_dir / "genome.fa.gz"), str(sample_dir / "genes.gtf.gz"), features,
                         val_chroms=["III"], test_chroms=["VI"], window=1536, max_eval_windows=48),
        run, FinetuneOptions(model=str(base_model), method="head", epochs=10, batch_size=8, lr=3e-3, device="cpu",
                             threads=1, quiet=True))
    sp = rep["split"]
    assert sp["train_contigs"] == ["I"] and sp["val_contigs"] == ["III"] and sp["test_contigs"] == ["VI"]
    assert sp["train_windows"] == 150 and sp["val_windows"] == 48  # chrI: 230,218 bp of ACGT / 1536
    assert rep["monitor"] == "val_auprc" and rep["window"] == 1536
    before, after = rep["initial_test"], rep["test"]
    for f in ("protein_coding_gene", "exon"):  # held-out chromosome VI, nucleotide level
        assert after[f"mcc/{f}"] >= before[f"mcc/{f}"] + 0.08, (f, before[f"mcc/{f}"], after[f"mcc/{f}"])
    assert after["auroc"] > before["auroc"] + 0.05 and after["loss"] < before["loss"]
    assert set(after) >= {f"auprc/{f}" for f in features}
    # a SegmentNT-type checkpoint: ntk.load_model gives segment_probabilities for the features
    m = ntk.load_model(run / "best")
    assert m.config.is_segmentation and m.features == features and m.classifier is None
    seq = IndexedFasta(sample_dir / "genome.fa.gz").fetch("VI", 50_000, 50_000 + 1536)
    out = m(m.tokenizer.encode([seq]))
    assert out.segment_probabilities.shape == (1, 1536, len(features))
    # ... that `ntk segment` runs
    seg = tmp_path / "seg"
    run_ntk("segment", sample_dir / "genome.fa.gz", "-m", run / "best", "-r", "VI:40001-52000", "-o", seg,
            "--device", "cpu", "--threads", "1", "-q", check=True)
    assert {p.name for p in seg.glob("*.bw")} == {f"{f}.bw" for f in features}
    m2 = json.loads((run / "metrics.json").read_text())
    assert m2["initial_test"]["mcc/exon"] == pytest.approx(before["mcc/exon"])


def test_windows_are_full_length_inside_acgt_runs_and_targets_align(tmp_path, sample_dir):
    fa_path = tmp_path / "g.fa"
    # a contig with an N run in the middle, and annotation on both sides of it
    rng = np.random.default_rng(0)
    left, right = "".join(rng.choice(list("ACGT"), 1000)), "".join(rng.choice(list("ACGT"), 700))
    fa_path.write_text(">c1\n" + left + "N" * 50 + right + "\n>c2\n" + "ACGT" * 10 + "\n")
    fa = IndexedFasta(fa_path)
    bed = tmp_path / "a.bed"
    bed.write_text("c1\t100\t200\tf\nc1\t1040\t1100\tf\nc1\t1500\t1750\tg\n")
    ann = read_annotation(bed, ["f", "g"], fa.lengths)
    w = genome_windows(fa, ["c1", "c2"], 480, crop=48)
    assert set((w.start + 480 <= w.run_end) & (w.start >= w.run_start)) == {True}
    assert w.skipped_bp == 40  # c2 is shorter than a window
    kept = sorted(zip(w.keep_start.tolist(), w.keep_end.tolist()))
    assert kept[0][0] == 0 and kept[-1][1] == 1750  # every ACGT nucleotide scored once
    assert all(a[1] == b[0] or b[0] == 1050 for a, b in zip(kept, kept[1:]))
    tok = ntk.NucleotideTokenizer("v2")
    wb = WindowBatches(fa, ann, w, tok, batch_size=4, train=True, seed=1, rc_augment=True)
    batch = next(iter(wb))
    assert batch["input_ids"].shape == (4, 81) and batch["targets"].shape == (4, 480, 2)
    assert not (batch["input_ids"] == tok.token_to_id("N")).any()
    # every batch (shifted and reverse-complemented at random) keeps targets aligned with its sequence
    seq_all = fa.fetch("c1")
    truth = ann.targets("c1", 0, 1750)
    for _ in range(5):
        b = next(iter(wb))
        for ids, t in zip(b["input_ids"], b["targets"].numpy()):
            s = "".join(tok.id_to_token(int(i)) for i in ids[1:])
            pos = seq_all.find(s)
            if pos < 0:  # reverse-complemented window
                s = s[::-1].translate(str.maketrans("ACGT", "TGCA"))
                pos = seq_all.find(s)
                t = t[::-1]
            assert pos >= 0 and np.array_equal(t, truth[pos:pos + 480])


def test_segment_errors(tmp_path, base_model, sample_dir):
    genome, gtf = str(sample_dir / "genome.fa.gz"), str(sample_dir / "genes.gtf.gz")
    o = FinetuneOptions(model=str(base_model), device="cpu", quiet=True, steps=1)
    with pytest.raises(InputError, match="feature '5UTR' is absent from the annotation"):
        finetune_segment(SegmentTaskInput(genome, gtf, ["exon", "5UTR"], val_chroms=["III"]), tmp_path / "a", o)
    with pytest.raises(InputError, match="--val-chroms is required"):
        finetune_segment(SegmentTaskInput(genome, gtf, ["exon"]), tmp_path / "a", o)
    with pytest.raises(InputError, match="--val-chroms: contig 'chrIII' is not in the FASTA \\(the FASTA has 'III'"):
        finetune_segment(SegmentTaskInput(genome, gtf, ["exon"], val_chroms=["chrIII"]), tmp_path / "a", o)
    with pytest.raises(InputError, match="--window 1000: must be a positive multiple of 24"):
        finetune_segment(SegmentTaskInput(genome, gtf, ["exon"], val_chroms=["III"], window=1000), tmp_path / "a", o)
    assert not (tmp_path / "a").exists()
    # a GTF naming contigs chrI/chrIII/chrVI against the sample FASTA: the CLI names the fix, in one line
    renamed = tmp_path / "chr.gtf"
    with gzip.open(gtf, "rt") as fi, open(renamed, "w") as fo:
        for line in fi:
            fo.write(line if line.startswith("#") else "chr" + line)
    p = run_ntk("finetune", "segment", "-f", genome, "-a", renamed, "--features", "exon", "--val-chroms", "III",
                "-m", base_model, "-o", tmp_path / "b")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert re.search(r"line \d+: contig 'chr(I|III|VI)' is not in the FASTA \(the FASTA has '(I|III|VI)'", p.stderr)
    assert "--chr-map" in p.stderr
    assert not (tmp_path / "b").exists()


def test_segment_head_of_a_segmentnt_base_is_reused_per_feature(golden_dir):
    """Fine-tuning from a SegmentNT model: the U-Net and the fc rows of features it already predicts carry over."""
    from ntk.pipelines.finetune import build_task_model

    base = ntk.load_model(golden_dir / "segment_nt_tiny")  # features: protein_coding_gene, exon, splice_donor
    m = build_task_model(base, "segment", features=["exon", "lncRNA", "protein_coding_gene"]).eval()
    assert m.config.rescaling_factor == base.config.rescaling_factor and m.features[1] == "lncRNA"
    seq = "ACGTTGCAAGGCTTAACGTACGATCGATGCATGCAAATTTGGGCCCATATGCGCTAGCTAGGATCCAT" * 4  # 272 nt
    batch = base.tokenizer.encode([seq[:240]])  # 40 tokens: a multiple of 4
    with torch.no_grad():
        want, got = base(batch).segment_probabilities, m(batch).segment_probabilities
    assert_f32_close(got[..., 0], want[..., 1], scale=1, what="exon")
    assert_f32_close(got[..., 2], want[..., 0], scale=1, what="protein_coding_gene")
