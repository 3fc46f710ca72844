"""Checkpoint loading: formats, safety, validation errors as one clear line (no traceback)."""
import json
import pickle
import shutil

import pytest
import torch
from conftest import assert_f32_close, run_ntk
from safetensors.torch import load_file, save_file

import ntk
from ntk.errors import CheckpointError


@pytest.fixture
def v2_copy(tmp_path, golden_dir):
    d = tmp_path / "ckpt"
    shutil.copytree(golden_dir / "nt_v2_tiny", d)
    return d


def _one_line_error(p, *needles):
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    text = " ".join(lines)
    assert text.startswith("ntk: error:"), p.stderr
    for n in needles:
        assert n in text, (n, p.stderr)


def test_pytorch_bin_and_sharded_safetensors(tmp_path, golden_dir):
    ref = ntk.load_model(golden_dir / "nt_v1_tiny")
    sd = load_file(golden_dir / "nt_v1_tiny" / "model.safetensors")
    # pytorch_model.bin (plain tensors, loaded with weights_only=True)
    d1 = tmp_path / "bin"
    d1.mkdir()
    shutil.copy(golden_dir / "nt_v1_tiny" / "config.json", d1)
    torch.save(sd, d1 / "pytorch_model.bin")
    # sharded safetensors with an index
    d2 = tmp_path / "sharded"
    d2.mkdir()
    shutil.copy(golden_dir / "nt_v1_tiny" / "config.json", d2)
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for fname, ks in shards.items():
        save_file({k: sd[k] for k in ks}, d2 / fname)
        weight_map.update({k: fname for k in ks})
    (d2 / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ids = torch.tensor([[3, 100, 200, 4104, 4100, 1]])
    want = ref(ids).logits
    for d in (d1, d2):
        torch.testing.assert_close(ntk.load_model(d)(ids).logits, want, rtol=0, atol=0)


def test_legacy_and_extra_keys_tolerated(v2_copy):
    sd = load_file(v2_copy / "model.safetensors")
    # released v2 checkpoints carry an unused learned position table and rotary inv_freq buffers
    sd["esm.embeddings.position_embeddings.weight"] = torch.zeros(66, 32)
    sd["esm.encoder.layer.0.attention.self.rotary_embeddings.inv_freq"] = torch.zeros(4)
    sd["esm.embeddings.position_ids"] = torch.arange(66)[None]
    save_file(sd, v2_copy / "model.safetensors")
    ntk.load_model(v2_copy)


def test_missing_tensor(v2_copy):
    sd = load_file(v2_copy / "model.safetensors")
    del sd["esm.encoder.layer.1.attention.self.key.weight"]
    save_file(sd, v2_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match="1 missing: esm.encoder.layer.1.attention.self.key.weight"):
        ntk.load_model(v2_copy)
    _one_line_error(run_ntk("models", "info", v2_copy), "missing", "layer.1.attention.self.key.weight")


def test_wrong_shape(v2_copy):
    cfg = json.loads((v2_copy / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (v2_copy / "config.json").write_text(json.dumps(cfg))
    _one_line_error(run_ntk("models", "info", v2_copy), "wrong shape", "intermediate.dense.weight")


def test_unknown_architecture(v2_copy):
    cfg = json.loads((v2_copy / "config.json").read_text())
    cfg["model_type"] = "bert"
    (v2_copy / "config.json").write_text(json.dumps(cfg))
    _one_line_error(run_ntk("models", "info", v2_copy), "unknown architecture", "bert")


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_needing_code_execution_is_refused(tmp_path, golden_dir):
    d = tmp_path / "evil"
    d.mkdir()
    shutil.copy(golden_dir / "nt_v2_tiny" / "config.json", d)
    sd = dict(load_file(golden_dir / "nt_v2_tiny" / "model.safetensors"))
    sd["payload"] = Evil()
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump(sd, f)
    p = run_ntk("models", "info", d)
    _one_line_error(p, "refusing to load", "code execution")
    assert "this must never run" not in p.stdout + p.stderr


def test_corrupt_files(tmp_path, golden_dir):
    d = tmp_path / "corrupt"
    d.mkdir()
    shutil.copy(golden_dir / "nt_v2_tiny" / "config.json", d)
    (d / "model.safetensors").write_bytes(b"not a safetensors file at all")
    _one_line_error(run_ntk("models", "info", d), "not a readable safetensors file")
    (d / "config.json").write_text("{broken")
    _one_line_error(run_ntk("models", "info", d), "not valid JSON")
    _one_line_error(run_ntk("models", "info", tmp_path / "nope"), "no such checkpoint directory")
    _one_line_error(run_ntk("models", "info", "nt-v2-50m"), "not in the local HF cache", "ntk models download")


def test_hf_cache_preset_resolution(tmp_path, golden_dir, monkeypatch):
    snap = tmp_path / "hub" / "models--InstaDeepAI--nucleotide-transformer-v2-50m-multi-species" / "snapshots" / "abc"
    shutil.copytree(golden_dir / "nt_v2_tiny", snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    m = ntk.load_model("nt-v2-50m")
    assert m.source == str(snap)


def test_save_roundtrip(tmp_path, golden_dir):
    m = ntk.load_model(golden_dir / "segment_nt_tiny")
    out = ntk.save_model(m, tmp_path / "saved")
    m2 = ntk.load_model(out)
    ids = torch.tensor([[3] + [100 + i for i in range(8)]])
    torch.testing.assert_close(m(ids).segment_logits, m2(ids).segment_logits, rtol=0, atol=0)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_segment_nt_config_with_num_features_and_no_feature_names(tmp_path, golden_dir):
    """SegmentNT's first published config: "num_features": 14, no "features" list -> the documented SegmentNT
    features, and the 14-feature head loads (it used to be a 0-feature head: fc.weight (168, H) rejected)."""
    from ntk.model.config import SEGMENT_NT_FEATURES, NTConfig
    from ntk.model.nt import NucleotideTransformer

    cfg = json.loads((golden_dir / "segment_nt_tiny" / "config.json").read_text())
    cfg["features"] = list(SEGMENT_NT_FEATURES)
    torch.manual_seed(0)
    m = NucleotideTransformer(NTConfig.from_dict(cfg))
    assert tuple(m.fc.weight.shape) == (6 * 2 * 14, cfg["hidden_size"])
    ntk.save_model(m, tmp_path / "seg")
    first = json.loads((tmp_path / "seg" / "config.json").read_text())
    del first["features"]
    first["num_features"] = 14
    (tmp_path / "seg" / "config.json").write_text(json.dumps(first))
    loaded = ntk.load_model(tmp_path / "seg")
    assert loaded.features == SEGMENT_NT_FEATURES and loaded.config.is_segmentation
    ids = loaded.tokenizer.encode(["ACGTAC" * 8]).input_ids
    # same weights (a freshly built module and a loaded one may take different kernels: a few ulp, not exact)
    assert_f32_close(loaded(ids).segment_logits, m.eval()(ids).segment_logits, what="reloaded")
    p = run_ntk("models", "info", tmp_path / "seg")
    assert p.returncode == 0 and "CTCF-bound" in p.stderr
    # a list that disagrees with num_features is an error naming both
    first.update(features=["exon"], num_features=14)
    (tmp_path / "seg" / "config.json").write_text(json.dumps(first))
    with pytest.raises(CheckpointError, match="num_features 14"):
        ntk.load_model(tmp_path / "seg")
