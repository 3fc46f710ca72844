"""NTv3 model core: parity with the PyTorch code shipped with the released checkpoints (expected_hf.npz) and
with the JAX port (expected.npz, reference="jax"), loader strictness, tokenizer."""
import json
import shutil

import numpy as np
import pytest
import torch

import ntk
from ntk.errors import CheckpointError
from ntk.model.ntv3 import NTv3, NTv3Tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# float32 CPU port of float32 reference outputs; errors are relative to the largest |value| of each output
RTOL = 1e-5
SKIP = {"input_ids", "filter_list", "species_ids", "pad_input_ids", "pad_block_valid"}


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)


def check_all(m, z):
    """Every output of the npz (main and pad_ cases) against the model; returns the number compared."""
    n = 0
    for pfx in ("", "pad_"):
        if pfx + "input_ids" not in z.files:
            continue
        sp = torch.as_tensor(z["species_ids"]) if "species_ids" in z.files else None
        out = m(torch.as_tensor(z[pfx + "input_ids"]), species_ids=sp, output_hidden_states=True)
        for k in z.files:
            if k in SKIP or not k.startswith(pfx) or (pfx == "" and k.startswith("pad_")):
                continue
            err = rel_err(out[k[len(pfx):]].numpy(), z[k])
            assert err <= RTOL, f"{k}: relative error {err:.2e}"
            n += 1
    return n


@pytest.mark.parametrize("name", ["ntv3_pre_tiny", "ntv3_post_tiny"])
def test_parity_hf(golden_dir, name):
    m = ntk.load_model(golden_dir / name)
    assert isinstance(m, NTv3) and m.reference == "hf"
    z = np.load(golden_dir / name / "expected_hf.npz")
    assert m.config.filter_list == z["filter_list"].tolist()
    n = check_all(m, z)
    assert n == len([k for k in z.files if k not in SKIP])  # every output compared, padded-row case included
    out = m(torch.as_tensor(z["input_ids"]), species_ids=torch.as_tensor(z["species_ids"]) if "species_ids" in z.files
            else None, output_hidden_states=True)
    L = m.config.num_layers
    assert len(out.hidden_states) == L + 1 and torch.equal(out.hidden_states[L], out.after_transformer_embedding)
    assert torch.equal(out.last_hidden_state, out.embedding)


@pytest.mark.parametrize("name", ["ntv3_pre_tiny", "ntv3_post_tiny"])
def test_parity_jax_mode(golden_dir, name):
    m = ntk.load_model(golden_dir / name)
    m.reference = "jax"
    check_all(m, np.load(golden_dir / name / "expected.npz"))


def test_hf_and_jax_differ_where_documented(golden_dir):
    """The padded-row case: the HF code runs unmasked, the JAX port masks all-<pad> blocks as keys."""
    m = ntk.load_model(golden_dir / "ntv3_pre_tiny")
    hf = np.load(golden_dir / "ntv3_pre_tiny" / "expected_hf.npz")
    jx = np.load(golden_dir / "ntv3_pre_tiny" / "expected.npz")
    assert rel_err(hf["pad_logits"], jx["pad_logits"]) > 20 * RTOL  # 4.6e-4 on these vectors
    ids = torch.as_tensor(hf["pad_input_ids"])
    assert rel_err(m(ids).logits.numpy(), hf["pad_logits"]) <= RTOL
    m.reference = "jax"
    assert rel_err(m(ids).logits.numpy(), jx["pad_logits"]) <= RTOL


def test_post_heads_semantics(golden_dir):
    m = ntk.load_model(golden_dir / "ntv3_post_tiny")
    z = np.load(golden_dir / "ntv3_post_tiny" / "expected_hf.npz")
    assert m.species == ["human", "mouse", "arabidopsis"]
    assert m.species_id("mouse") == 7
    with pytest.raises(ValueError, match="human, mouse, arabidopsis"):
        m.species_id("zebrafish")
    out = m(torch.as_tensor(z["input_ids"]), species_ids=torch.as_tensor(z["species_ids"]))
    bw = out.bigwig_tracks_logits
    assert out.crop == (20, 44) and bw.shape == (3, 24, 3)
    assert (bw[0] > 0).all() and (bw[1, :, :2] > 0).all() and (bw[1, :, 2] == 0).all() and (bw[2] == 0).all()
    p = out.bed_probabilities
    assert p.shape == (3, 24, 3) and torch.allclose(p, torch.softmax(out.bed_tracks_logits, -1)[..., 1])
    # one species id for the whole batch broadcasts
    one = m(torch.as_tensor(z["input_ids"][:1]), species_ids=6)
    assert torch.allclose(one.bigwig_tracks_logits[0], bw[0], atol=1e-6)
    with pytest.raises(ValueError, match="species_ids"):
        m(torch.as_tensor(z["input_ids"]))


def test_length_must_be_multiple_of_unit(golden_dir):
    m = ntk.load_model(golden_dir / "ntv3_pre_tiny")
    with pytest.raises(ValueError, match="multiple of 8"):
        m(torch.full((1, 60), 6))


def _copy(golden_dir, tmp_path, name, **config_changes):
    d = tmp_path / name
    shutil.copytree(golden_dir / name, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(config_changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_refuses_unimplemented_fields(golden_dir, tmp_path):
    d = _copy(golden_dir, tmp_path, "ntv3_pre_tiny", residual_scale=0.5, fancy_norm=True)
    with pytest.raises(CheckpointError, match="fancy_norm, residual_scale") as e:
        ntk.load_model(d)
    assert "not implemented" in str(e.value)
    d2 = _copy(golden_dir, tmp_path / "b", "ntv3_pre_tiny", num_hidden_layers_head=1)
    with pytest.raises(CheckpointError, match="num_hidden_layers_head"):
        ntk.load_model(d2)


def test_compute_dtype_fields_and_hf_metadata_accepted(golden_dir, tmp_path):
    d = _copy(golden_dir, tmp_path, "ntv3_pre_tiny", stem_compute_dtype="float32",
              transformer_qkvo_compute_dtype="bfloat16", auto_map={"AutoModel": "x.Y"},
              embeddings_layers_to_save=[1], transformers_version="4.57.0")
    m = ntk.load_model(d)
    assert m.config.compute_dtypes == {"stem_compute_dtype": "float32", "transformer_qkvo_compute_dtype": "bfloat16"}
    hf = m.config.hf_compute_dtypes
    assert hf["stem_compute_dtype"] == "float32" and hf["up_convolution_compute_dtype"] == "bfloat16"
    assert m.dtype == torch.float32  # ntk computes in the dtype asked for
    d = _copy(golden_dir, tmp_path / "bad", "ntv3_pre_tiny", stem_compute_dtype="int8")
    with pytest.raises(CheckpointError, match="stem_compute_dtype"):
        ntk.load_model(d)


def test_loader_ignores_inv_freq_and_names_bad_tensors(golden_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    d = tmp_path / "m"
    shutil.copytree(golden_dir / "ntv3_post_tiny", d)
    sd = load_file(str(d / "model.safetensors"))
    sd["core.transformer_blocks.0.sa_layer.rotary_embedding.inv_freq"] = torch.ones(6)
    save_file(sd, str(d / "model.safetensors"))
    ntk.load_model(d)
    del sd["core.bed_head.head.bias"]
    sd["core.bigwig_head.species_heads.2.head.weight"] = torch.ones(1, 24)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing: core.bed_head.head.bias.*unexpected: core.bigwig_head"):
        ntk.load_model(d)


def test_bf16_runs_close(golden_dir):
    m = ntk.load_model(golden_dir / "ntv3_post_tiny", dtype=torch.bfloat16)
    z = np.load(golden_dir / "ntv3_post_tiny" / "expected_hf.npz")
    out = m(torch.as_tensor(z["input_ids"]), species_ids=torch.as_tensor(z["species_ids"]))
    assert out.logits.dtype == torch.bfloat16
    assert rel_err(out.logits.float().numpy(), z["logits"]) < 0.1  # bf16 has 8 mantissa bits; depth ~10 ops


def test_tokenizer():
    tok = NTv3Tokenizer(unit=8)
    b = tok.encode(["ACGTn", "acgtRYACG"])
    assert b.input_ids.shape == (2, 16)
    assert b.input_ids[0].tolist()[:6] == [6, 8, 9, 7, 10, 10] and (b.input_ids[0, 5:] == 10).all()
    assert b.input_ids[1].tolist()[:9] == [6, 8, 9, 7, 10, 10, 6, 8, 9]
    assert b.attention_mask.sum(1).tolist() == [5, 9]
    assert b.offsets[1, 8].tolist() == [8, 9] and b.offsets[0, 5].tolist() == [-1, -1]
    assert (tok.encode("ACG", pad_token="<pad>").input_ids[0, 3:] == 1).all()
    with pytest.raises(ValueError, match="invalid nucleotide"):
        tok.encode("ACGU")


def test_presets_and_models_cli(golden_dir, tmp_path, monkeypatch):
    from conftest import run_ntk

    monkeypatch.setenv("COLUMNS", "250")  # rich wraps tables at the terminal width
    p = run_ntk("models", "list")
    shown = p.stdout + p.stderr
    assert p.returncode == 0 and "InstaDeepAI/NTv3_650M_post" in shown and "ntv3-8m-pre" in shown
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="ntv3-100m-post.*not in the local HF cache.*ntk models download"):
        ntk.load_model("ntv3-100m-post")
    p = run_ntk("models", "info", golden_dir / "ntv3_post_tiny")
    shown = p.stdout + p.stderr
    assert p.returncode == 0 and "human, mouse, arabidopsis" in shown and "window unit" in shown
    # the HF post-trained model_type spelling is accepted too
    d = _copy(golden_dir, tmp_path, "ntv3_post_tiny", model_type="ntv3_posttrained")
    assert ntk.load_model(d).config.is_post_trained
