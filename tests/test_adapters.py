"""LoRA and IA3 adapters: which parameters exist and train, and merging into a plain checkpoint."""
import pytest
import torch

import ntk
from ntk.model.adapters import (
    IA3Linear,
    LoRALinear,
    adapter_parameters,
    apply_adapters,
    apply_ia3,
    apply_lora,
    has_adapters,
    merge_adapters,
)
from ntk.model.config import preset_config
from ntk.model.nt import NucleotideTransformer

from conftest import MERGE_ULPS, assert_f32_close


def tiny(seed=0, labels=3):
    torch.manual_seed(seed)
    cfg = preset_config("tiny")
    cfg.architectures, cfg.num_labels = ["EsmForSequenceClassification"], labels
    return NucleotideTransformer(cfg).eval()


def batch(model):
    seqs = ["ACGTAGCTAGCTAGGATCGATCGATTTACG" * 3, "GGGCCCATATAT" * 4 + "NNACGT"]
    return model.tokenizer.encode(seqs)


def randomise_adapters(model):
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.add_(torch.randn_like(p) * 0.2)


def test_lora_parameter_count_and_names():
    m = tiny()
    cfg = m.config
    cfg_ad = apply_lora(m, rank=4, alpha=8, targets="query,value")
    n = sum(p.numel() for p in adapter_parameters(m))
    H, L = cfg.hidden_size, cfg.num_hidden_layers
    assert n == L * 2 * (4 * H + H * 4)
    assert cfg_ad == {"method": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["query", "value"]}
    keys = set(m.state_dict())
    assert "esm.encoder.layer.0.attention.self.query.lora_A" in keys
    assert "esm.encoder.layer.0.attention.self.query.weight" in keys  # HF names kept
    assert not any("key.lora" in k for k in keys)
    assert isinstance(m.esm.encoder.layer[1].attention.self.value, LoRALinear)


def test_lora_starts_as_identity_and_merges_exactly(tmp_path):
    m = tiny()
    b = batch(m)
    before = m(b).logits
    apply_lora(m, rank=4, alpha=8, targets="query,key,value,attn_out,ffn_in,ffn_out")
    assert_f32_close(m(b).logits.detach(), before.detach(), what="LoRA at init")  # B = 0 at init
    randomise_adapters(m)
    adapted = m(b).logits
    assert (adapted - before).abs().max() > 1e-3  # the adapters do something
    merge_adapters(m)
    assert not has_adapters(m)
    assert all(type(mod) is torch.nn.Linear for mod in m.esm.modules() if isinstance(mod, torch.nn.Linear))
    assert_f32_close(m(b).logits.detach(), adapted.detach(), MERGE_ULPS, what="merged")
    # the merged model is a plain checkpoint: ntk.load_model reads it back with identical outputs
    ntk.save_model(m, tmp_path / "merged")
    again = ntk.load_model(tmp_path / "merged")
    assert_f32_close(again(b).logits.detach(), adapted.detach(), MERGE_ULPS, what="reloaded")


def test_ia3_targets_keys_values_and_ffn_activations(tmp_path):
    m = NucleotideTransformer(preset_config("tiny"), lm_head=False, seq_head_labels=1).eval()
    cfg = m.config
    b = batch(m)
    before = m(b).logits
    apply_ia3(m)
    layer = m.esm.encoder.layer[0]
    assert isinstance(layer.attention.self.key, IA3Linear) and layer.attention.self.key.side == "output"
    assert isinstance(layer.attention.self.value, IA3Linear)
    assert isinstance(layer.output.dense, IA3Linear) and layer.output.dense.side == "input"
    assert not isinstance(layer.attention.self.query, IA3Linear)
    assert not isinstance(layer.attention.output.dense, IA3Linear)
    n = sum(p.numel() for p in adapter_parameters(m))
    assert n == cfg.num_hidden_layers * (2 * cfg.hidden_size + cfg.intermediate_size)
    assert_f32_close(m(b).logits.detach(), before.detach(), what="IA3 at init")  # ones at init
    randomise_adapters(m)
    adapted = m(b).logits
    assert (adapted - before).abs().max() > 1e-4
    merge_adapters(m)
    assert_f32_close(m(b).logits.detach(), adapted.detach(), MERGE_ULPS, what="merged")


def test_v1_ffn_with_bias_ia3_merge():
    torch.manual_seed(1)
    from ntk.model.config import NTConfig, _v1
    cfg = NTConfig.from_dict(_v1(2, 32, 2, 48, max_pos=130))
    m = NucleotideTransformer(cfg, lm_head=False, seq_head_labels=2).eval()
    apply_ia3(m, targets="key,value,ffn_in,ffn_out")
    randomise_adapters(m)
    b = batch(m)
    adapted = m(b).logits
    merge_adapters(m)
    assert_f32_close(m(b).logits.detach(), adapted.detach(), MERGE_ULPS, what="merged")


def test_apply_adapters_round_trip_and_errors():
    m = tiny()
    conf = apply_lora(m, rank=2, alpha=4)
    m2 = tiny(seed=1)
    apply_adapters(m2, conf)
    assert set(m.state_dict()) == set(m2.state_dict())
    with pytest.raises(ValueError, match="unknown adapter target"):
        apply_lora(tiny(), targets="qkv")
    with pytest.raises(ValueError, match="already carries"):
        apply_ia3(m, targets="query")


def test_unmerged_adapter_checkpoint_loads_merged(tmp_path):
    """A checkpoint saved with its adapters (config.json ntk_adapter) loads through ntk.load_model, merged."""
    from ntk.model.adapters import ADAPTER_KEY

    m = tiny()
    m.config.extra[ADAPTER_KEY] = apply_lora(m, rank=2, alpha=4, targets="query,ffn_in")
    randomise_adapters(m)
    b = batch(m)
    adapted = m(b).logits
    ntk.save_model(m, tmp_path / "ad")
    loaded = ntk.load_model(tmp_path / "ad")
    assert not has_adapters(loaded) and ADAPTER_KEY not in loaded.config.extra
    assert_f32_close(loaded(b).logits.detach(), adapted.detach(), MERGE_ULPS, what="loaded")
