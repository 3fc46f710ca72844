"""ntk's nucleotide head (model/heads.py NucleotideHead, `ntk finetune segment --nucleotide-head C`): a fresh head
leaves a SegmentNT model's output unchanged, it reads the window's bases back from the 6-mer token ids, it learns a
nucleotide-exact target across token boundaries, it survives save/load (BatchNorm statistics included), and the
CLI path trains it and runs the result in `ntk segment`."""
import json

import numpy as np
import pytest
import torch
from conftest import assert_f32_close, run_ntk

import ntk
from ntk.model.config import NTConfig
from ntk.model.heads import NUCLEOTIDE_HEAD_KEY
from ntk.model.nt import NucleotideTransformer
from ntk.model.tokenizer import sequence_codes
from ntk.pipelines.finetune import build_task_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_dna(n: int, rng) -> str:
    return "".join(rng.choice(list("ACGT"), size=n))


@pytest.fixture(scope="module")
def golden_seg(golden_dir):
    return ntk.load_model(golden_dir / "segment_nt_tiny", device="cpu", dtype=torch.float32)


def with_head(base, channels=8, seed=1):
    """``base`` + a nucleotide head whose output layer is random (not the zero start), in eval mode."""
    m = build_task_model(base, "segment", features=base.features, nucleotide_head=channels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.nuc_head.out.weight.copy_(torch.randn(m.nuc_head.out.weight.shape, generator=g) * 0.3)
        m.nuc_head.norm.running_mean.copy_(torch.randn(channels, generator=g) * 0.1)
        m.nuc_head.norm.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
    return m.eval()


def test_fresh_head_changes_nothing_and_reads_the_bases(golden_seg):
    m = build_task_model(golden_seg, "segment", features=golden_seg.features, nucleotide_head=8).eval()
    assert m.config.extra[NUCLEOTIDE_HEAD_KEY] == {"kernel": 9, "dilations": [1, 2, 4, 8, 16, 32], "channels": 8}
    seq = random_dna(480, np.random.default_rng(0))
    batch = m.tokenizer.encode([seq])
    with torch.no_grad():
        want, got = golden_seg(batch).segment_logits, m(batch).segment_logits
    assert torch.equal(got, want)  # the output layer starts at zero: + 0.0 is exact
    bases = m.nuc_head.bases[batch.input_ids[0, 1:]].reshape(-1).numpy()
    assert np.array_equal(bases, sequence_codes(seq))  # A T C G = 0..3 in sequence order
    with pytest.raises(ValueError, match="input_ids"):
        m.segment_head(m.esm(batch.input_ids, None)[0])
    # a classifier built from it carries no nucleotide-head key
    c = build_task_model(with_head(golden_seg), "sequence", label_names=["a", "b"], problem_type="single_label")
    assert NUCLEOTIDE_HEAD_KEY not in c.config.extra and c.nuc_head is None


def test_a_new_feature_set_keeps_the_head_of_the_features_the_base_predicts():
    """Fine-tuning the embedded model (which has a nucleotide head) on other features: the head's body and the
    output rows of the features it already predicts carry over, so those features start where the base is."""
    base = ntk.load_model(None, device="cpu", dtype=torch.float32)
    assert base.nuc_head is not None
    m = build_task_model(base, "segment", features=["exon", "lncRNA", "splice_donor"]).eval()
    assert m.config.extra[NUCLEOTIDE_HEAD_KEY] == base.config.extra[NUCLEOTIDE_HEAD_KEY]
    batch = m.tokenizer.encode([random_dna(480, np.random.default_rng(5))])
    with torch.no_grad():
        want, got = base(batch).segment_probabilities, m(batch).segment_probabilities
    for j, f in ((0, "exon"), (2, "splice_donor")):
        assert_f32_close(got[..., j], want[..., base.features.index(f)], scale=1, what=f)
    # a config that names a head its model does not have (a masked-LM model trained from this one): a fresh head
    d = base.config.to_dict()
    d["architectures"] = ["EsmForMaskedLM"]
    for k in ("features", "num_layers_head"):
        d.pop(k)
    lm = NucleotideTransformer(NTConfig.from_dict(d))
    assert lm.nuc_head is None and NUCLEOTIDE_HEAD_KEY in lm.config.extra
    m2 = build_task_model(lm, "segment", features=["exon"])
    assert m2.nuc_head is not None and not m2.nuc_head.out.weight.any()


def test_head_learns_a_nucleotide_exact_target_across_token_boundaries(golden_seg):
    """Target: 'the G of an AG dinucleotide' (an acceptor-like signal), often split over two tokens. 150 Adam steps
    on the head alone bring held-out MCC above 0.95; SegmentNT's own head (one linear per token) is not trained."""
    m = build_task_model(golden_seg, "segment", features=golden_seg.features, nucleotide_head=16)
    rng = np.random.default_rng(0)
    for p in m.parameters():
        p.requires_grad_(False)
    params = list(m.nuc_head.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=3e-3)

    def data(n):
        seqs = [random_dna(240, rng) for _ in range(n)]
        codes = np.stack([sequence_codes(s) for s in seqs])
        y = np.zeros(codes.shape, dtype=np.int64)
        y[:, 1:] = (codes[:, :-1] == 0) & (codes[:, 1:] == 3)  # A=0, G=3
        return m.tokenizer.encode(seqs).input_ids, torch.from_numpy(y)

    m.train()
    for _ in range(150):
        ids, y = data(8)
        logits = m(ids, heads="segment").segment_logits[:, :, 0]  # feature 0
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 2), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    ids, y = data(16)
    with torch.no_grad():
        pred = (m(ids, heads="segment").segment_probabilities[:, :, 0] > 0.5).long()
    tp = int(((pred == 1) & (y == 1)).sum())
    fp, fn = int(((pred == 1) & (y == 0)).sum()), int(((pred == 0) & (y == 1)).sum())
    tn = y.numel() - tp - fp - fn
    mcc = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert mcc > 0.95, (tp, fp, fn, mcc)
    # boundary-spanning cases (A at the end of one token, G at the start of the next) are among them
    crossing = y.clone()
    crossing[:, [i for i in range(y.shape[1]) if i % 6 != 0]] = 0
    assert int(crossing.sum()) > 20 and int((pred * crossing).sum()) >= 0.9 * int(crossing.sum())


def test_save_load_round_trip(golden_seg, tmp_path):
    m = with_head(golden_seg)
    ntk.save_model(m, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg[NUCLEOTIDE_HEAD_KEY]["channels"] == 8 and cfg["architectures"] == ["SegmentNT"]
    m2 = ntk.load_model(tmp_path / "m", device="cpu", dtype=torch.float32)
    batch = m.tokenizer.encode([random_dna(240, np.random.default_rng(3))])
    with torch.no_grad():
        a, b, base = m(batch).segment_probabilities, m2(batch).segment_probabilities, golden_seg(batch)
    assert torch.equal(a, b)
    assert (a - base.segment_probabilities).abs().max() > 1e-3  # the head is live


def test_cli_trains_the_head_and_segment_runs_it(tmp_path, sample_dir, golden_dir):
    run = tmp_path / "run"
    p = run_ntk("finetune", "segment", "-f", sample_dir / "genome.fa.gz", "-a", sample_dir / "genes.gtf.gz",
                "--features", "exon,splice_donor", "--train-chroms", "I", "--val-chroms", "III", "--window", "480",
                "--steps", "4", "--batch-size", "2", "--max-eval-windows", "4", "--nucleotide-head", "4",
                "-m", golden_dir / "segment_nt_tiny", "--device", "cpu", "--threads", "1", "-q", "-o", run)
    assert p.returncode == 0, p.stderr
    cfg = json.loads((run / "best" / "config.json").read_text())
    assert cfg[NUCLEOTIDE_HEAD_KEY]["channels"] == 4
    seg = tmp_path / "seg"
    p = run_ntk("segment", sample_dir / "genome.fa.gz", "-m", run / "best", "-r", "VI:40001-44000", "-o", seg,
                "--device", "cpu", "--threads", "1", "-q")
    assert p.returncode == 0, p.stderr
    assert {q.name for q in seg.glob("*.bw")} == {"exon.bw", "splice_donor.bw"}
    p = run_ntk("finetune", "segment", "-f", sample_dir / "genome.fa.gz", "-a", sample_dir / "genes.gtf.gz",
                "--features", "exon", "--val-chroms", "III", "--nucleotide-head", "-1",
                "-m", golden_dir / "segment_nt_tiny", "-q", "-o", tmp_path / "bad")
    assert p.returncode != 0 and "--nucleotide-head -1" in p.stderr and "Traceback" not in p.stderr


def test_segment_probabilities_match_direct_windows(golden_seg, sample_dir, tmp_path):
    """`ntk segment` with a nucleotide-head model: a region inside one window equals the model's direct output."""
    from ntk.io.fasta import IndexedFasta

    m = with_head(golden_seg)
    ntk.save_model(m, tmp_path / "m")
    seq = IndexedFasta(sample_dir / "genome.fa.gz").fetch("VI", 40_000, 40_480)
    seg = tmp_path / "seg"
    p = run_ntk("segment", sample_dir / "genome.fa.gz", "-m", tmp_path / "m", "-r", "VI:40001-40480", "-o", seg,
                "--window", "480", "--device", "cpu", "--threads", "1", "-q")
    assert p.returncode == 0, p.stderr
    import pyBigWig

    with torch.no_grad():
        want = m(m.tokenizer.encode([seq])).segment_probabilities[0, :, m.features.index("exon")].numpy()
    bw = pyBigWig.open(str(seg / "exon.bw"))
    got = np.asarray(bw.values("VI", 40_000, 40_480), dtype=np.float32)
    assert_f32_close(got, want, scale=1, what="exon")
