"""Heads run only when asked for (``m(ids, heads=...)``): every output is bit-identical to the all-heads call.

Issue #20: `ntk segment` used to run the 4,107-way LM head on every token and throw the logits away."""
import gzip

import numpy as np
import pytest
import torch

from ntk.model import NTConfig, NucleotideTransformer, load_model
from ntk.model.nt import HEADS, wanted_heads
from ntk.model.tokenizer import sequence_codes
from ntk.pipelines.segment import segment_genome


def _ids(m, n=2, tokens=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, m.config.vocab_size, (n, tokens), generator=g)
    ids[:, 0] = m.tokenizer.cls_id
    return ids


def test_wanted_heads_parsing():
    assert wanted_heads(True) == frozenset(HEADS)
    assert wanted_heads(False) == frozenset() == wanted_heads(None) == wanted_heads(())
    assert wanted_heads("segment") == {"segment"}
    assert wanted_heads(["lm", "classifier"]) == {"lm", "classifier"}
    with pytest.raises(ValueError, match="unknown head 'logits'"):
        wanted_heads("logits")


def test_embedded_model_heads_identical(one_torch_thread):
    """The embedded model has both an LM head and a SegmentNT head: each alone equals the all-heads call."""
    m = load_model(None)
    assert m.lm_head is not None and m.unet is not None
    ids = _ids(m, tokens=1 + 64)  # 64 DNA tokens: divisible by the U-Net's 4
    with torch.inference_mode():
        full = m(ids)
        seg = m(ids, heads="segment")
        lm = m(ids, heads="lm")
        trunk = m(ids, heads=False)
    assert full.logits is not None and full.segment_probabilities is not None
    assert seg.logits is None and lm.segment_logits is None and lm.segment_probabilities is None
    assert trunk.logits is None and trunk.segment_logits is None
    assert torch.equal(seg.segment_logits, full.segment_logits)
    assert torch.equal(seg.segment_probabilities, full.segment_probabilities)
    assert torch.equal(lm.logits, full.logits)
    for o in (seg, lm, trunk):
        assert torch.equal(o.last_hidden_state, full.last_hidden_state)


def test_golden_segment_model_heads_identical(golden_dir, one_torch_thread):
    m = load_model(golden_dir / "segment_nt_tiny")
    ids = _ids(m, tokens=1 + 16)
    with torch.inference_mode():
        full, seg = m(ids), m(ids, heads=("segment",))
    assert torch.equal(seg.segment_probabilities, full.segment_probabilities)


def test_classifier_heads_identical(one_torch_thread):
    """A fine-tuned classifier that kept its base's LM head: ``heads="classifier"`` gives the same logits
    (before, the LM logits were computed and then overwritten)."""
    cfg = NTConfig(vocab_size=4107, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=66, position_embedding_type="rotary",
                   num_labels=3, architectures=["EsmForSequenceClassification"])
    torch.manual_seed(0)
    m = NucleotideTransformer(cfg, lm_head=True).eval()
    ids = _ids(m, n=3, tokens=20)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 12:] = False
    with torch.inference_mode():
        full = m(ids, mask)
        cls = m(ids, mask, heads="classifier")
        lm = m(ids, mask, heads="lm")
    assert cls.logits.shape == (3, 3) and lm.logits.shape == (3, 20, 4107)
    assert torch.equal(cls.logits, full.logits)


def test_segment_pipeline_runs_only_the_segment_head(tmp_path, sample_dir, one_torch_thread):
    """`segment_genome` writes exactly the all-heads probabilities while never calling the LM head."""
    import pyBigWig

    m = load_model(None)
    calls = []
    m.lm_head.register_forward_hook(lambda *a: calls.append(1))
    window = m.config.extra["segment_window"]
    with gzip.open(sample_dir / "genome.fa.gz", "rt") as f:
        lines = f.read().splitlines()
    seq = "".join(lines[1:200])[:window]  # one window: the pipeline's batch is the reference's batch
    fa = tmp_path / "g.fa"
    fa.write_text(">I\n" + seq + "\n")
    segment_genome(fa, tmp_path / "out", model=m, window=window, crop=0, zoom_levels=0, threads=1)
    assert not calls
    tok = m.tokenizer
    ids = torch.from_numpy(np.asarray(tok.tokenize_codes(sequence_codes(seq))[0], dtype=np.int64))[None]
    with torch.inference_mode():
        want = m(ids, rescaling_factor=m.config.rescaling_for_tokens(ids.shape[1])).segment_probabilities[0]
    assert calls  # the all-heads call does run it
    with pyBigWig.open(str(tmp_path / "out" / f"{m.features[0]}.bw")) as bw:
        got = np.asarray(bw.values("I", 0, window), dtype=np.float32)
    np.testing.assert_array_equal(got, want[:, 0].numpy())
