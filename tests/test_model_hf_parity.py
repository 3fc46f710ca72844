"""Random v1 configurations built with transformers.EsmForMaskedLM load in ntk and match its outputs."""
import numpy as np
import pytest
import torch

import ntk

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("seed,layers,hidden,heads,ffn,token_dropout", [
    (0, 2, 32, 4, 64, True), (1, 3, 48, 6, 96, False), (2, 1, 64, 2, 128, True)])
def test_v1_random_configs_match_transformers(tmp_path, seed, layers, hidden, heads, ffn, token_dropout):
    torch.manual_seed(seed)
    cfg = transformers.EsmConfig(
        vocab_size=4105, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=66, position_embedding_type="absolute", layer_norm_eps=1e-12, pad_token_id=1,
        mask_token_id=2, emb_layer_norm_before=False, token_dropout=token_dropout, tie_word_embeddings=False)
    ref = transformers.EsmForMaskedLM(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm / bias values
        for name, p in ref.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "ckpt")
    m = ntk.load_model(tmp_path / "ckpt")

    tok = m.tokenizer
    batch = tok.encode(["ACGTACGGATTACANNACGTAGGCTAGCAT", "ACGTTTGACC", "TTTTTTCCCCCCGGGGGGAAAAAAACGT"])
    ids = batch.input_ids.clone()
    ids[2, 2] = tok.mask_id  # <mask> tokens in the batch
    ids[2, 4] = tok.mask_id
    mask = ids != tok.pad_id
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    got = m(ids, attention_mask=mask, output_hidden_states=True)
    sel = mask.numpy()
    assert len(got.hidden_states) == len(want.hidden_states)
    for i, (g, w) in enumerate(zip(got.hidden_states, want.hidden_states)):
        g, w = g.numpy()[sel], w.numpy()[sel]
        assert np.abs(g - w).max() / np.abs(w).max() <= 1e-5, f"hidden state {i}"
    g, w = got.logits.numpy()[sel], want.logits.numpy()[sel]
    assert np.abs(g - w).max() / np.abs(w).max() <= 1e-5


def test_saved_v1_checkpoint_loads_in_transformers(tmp_path, golden_dir):
    m = ntk.load_model(golden_dir / "nt_v1_tiny")
    ntk.save_model(m, tmp_path / "resaved")
    ref = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "resaved").eval()
    z = np.load(golden_dir / "nt_v1_tiny" / "expected.npz")
    ids = torch.as_tensor(z["input_ids"]).long()
    with torch.no_grad():
        w = ref(input_ids=ids, attention_mask=(ids != 1).long()).logits.numpy()
    sel = z["attention_mask"]
    assert np.abs(w[sel] - z["logits"][sel]).max() / np.abs(z["logits"][sel]).max() <= 1e-5
