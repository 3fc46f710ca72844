import torch
import torch.nn.functional as F

import ntk
from ntk.pipelines.finetune import build_task_model
from ntk.pipelines.finetune_segment import weighted_segment_loss


def test_weighted_loss_reduces_to_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 48, 3, 2)
    t = torch.randint(0, 2, (2, 48, 3))
    ce = F.cross_entropy(logits.reshape(-1, 2), t.reshape(-1))
    torch.testing.assert_close(weighted_segment_loss(logits, t, torch.ones(3)), ce)
    # up-weighting positives raises their share of the loss
    w = weighted_segment_loss(logits, t, torch.tensor([10.0, 1.0, 1.0]))
    pos0 = t[..., 0] == 1
    assert pos0.any() and not torch.isclose(w, ce)


def test_segment_model_keeps_base_lm_head(golden_dir):
    base = ntk.load_model(golden_dir / "nt_v2_tiny")
    m = build_task_model(base, "segment", features=["exon", "intron"])
    assert m.lm_head is not None and m.unet is not None
    torch.testing.assert_close(m.lm_head.decoder.weight, base.lm_head.decoder.weight)
    ids = torch.tensor([[3] + [100] * 8])
    out = m(ids)
    assert out.logits is not None and out.segment_probabilities.shape == (1, 48, 2)
