"""The model core reproduces the reference implementation's outputs on every golden checkpoint."""
import numpy as np
import pytest
import torch

import ntk

from conftest import assert_f32_close

RTOL = 1e-5


def rel_err(got, want, mask=None):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if mask is not None:
        got, want = got[mask], want[mask]
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)


@pytest.mark.parametrize("name", ["nt_v1_tiny", "nt_v2_tiny", "segment_nt_tiny"])
def test_golden_parity(golden_dir, name):
    m = ntk.load_model(golden_dir / name)
    z = np.load(golden_dir / name / "expected.npz")
    mask = z["attention_mask"]
    out = m(torch.as_tensor(z["input_ids"]), attention_mask=torch.as_tensor(mask), output_hidden_states=True)
    L = m.config.num_hidden_layers
    assert len(out.hidden_states) == L + 1
    for i in range(1, L + 1):
        assert rel_err(out.hidden_states[i].numpy(), z[f"hidden_states_{i}"], mask) <= RTOL, f"layer {i}"
    assert torch.equal(out.hidden_states[L], out.last_hidden_state)
    if "logits" in z.files:
        assert rel_err(out.logits.numpy(), z["logits"], mask) <= RTOL
    if "segment_logits" in z.files:
        assert out.segment_logits.shape == z["segment_logits"].shape
        assert rel_err(out.segment_logits.numpy(), z["segment_logits"]) <= RTOL
        assert rel_err(out.segment_probabilities.numpy(), z["segment_probabilities"]) <= RTOL
        assert m.config.features == ["protein_coding_gene", "exon", "splice_donor"]


def test_default_mask_is_ids_not_pad(golden_dir):
    m = ntk.load_model(golden_dir / "nt_v1_tiny")
    z = np.load(golden_dir / "nt_v1_tiny" / "expected.npz")
    out = m(z["input_ids"])  # numpy input, mask derived from pad id 1
    assert rel_err(out.logits.numpy(), z["logits"], z["attention_mask"]) <= RTOL


def test_tokenizer_attached_and_api(golden_dir):
    m = ntk.load_model(golden_dir / "nt_v2_tiny")
    batch = m.tokenizer.encode(["ACGTACGTACGTNNACGTAC", "ACGTAC"])
    out = m(batch)
    assert out.logits.shape == (2, batch.input_ids.shape[1], 4107)
    # a padded row equals the same sequence run alone (padding never changes real positions)
    alone = m(m.tokenizer.encode(["ACGTAC"]))
    assert_f32_close(out.last_hidden_state[1, :2].numpy(), alone.last_hidden_state[0].numpy(), what="padded row")


@pytest.mark.parametrize("name", ["nt_v1_tiny", "nt_v2_tiny"])
def test_embed_layer_matches_hidden_states(golden_dir, name):
    m = ntk.load_model(golden_dir / name)
    z = np.load(golden_dir / name / "expected.npz")
    ids = torch.as_tensor(z["input_ids"])
    out = m(ids, output_hidden_states=True)
    for layer in (0, 1, 2, -1, -2):
        torch.testing.assert_close(m.embed(ids, layer=layer), out.hidden_states[layer], rtol=0, atol=0)


def fro_rel(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return np.linalg.norm(got - want) / np.linalg.norm(want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["nt_v1_tiny", "nt_v2_tiny", "segment_nt_tiny"])
def test_low_precision_close_to_fp32(golden_dir, name, dtype):
    """bf16/fp16 stay within 2e-2 relative (Frobenius norm over non-pad positions) of fp32; the element-wise
    max error is bounded too (bf16 keeps 8 mantissa bits, so a few 1e-2 on the largest elements)."""
    z = np.load(golden_dir / name / "expected.npz")
    mask = z["attention_mask"]
    ref = ntk.load_model(golden_dir / name)(z["input_ids"], output_hidden_states=True)
    low = ntk.load_model(golden_dir / name, dtype=dtype)(z["input_ids"], output_hidden_states=True)
    assert low.last_hidden_state.dtype == dtype
    pairs = [(low.last_hidden_state, ref.last_hidden_state, True)]
    if ref.logits is not None:
        pairs.append((low.logits, ref.logits, True))
    if ref.segment_probabilities is not None:
        pairs.append((low.segment_probabilities, ref.segment_probabilities, False))
    for lo, hi, masked in pairs:
        lo, hi = lo.float().numpy(), hi.numpy()
        if masked:
            lo, hi = lo[mask], hi[mask]
        assert fro_rel(lo, hi) <= 2e-2
        assert rel_err(lo, hi) <= 5e-2


def test_rotary_rescaling_rule(golden_dir):
    m = ntk.load_model(golden_dir / "segment_nt_tiny")
    cfg = m.config
    assert cfg.rescaling_for_tokens(9) == pytest.approx(2.44140625)
    assert cfg.max_tokens == 157
    assert cfg.rescaling_for_tokens(157) == pytest.approx(2.44140625)
    assert cfg.rescaling_for_tokens(201) == pytest.approx(201 / 64)
