"""ChatNT: golden parity with the JAX reference (main and quirk cases), generation (KV cache == full recompute,
sampling with a seed, batched prompts of different lengths), loading and refusals."""
import json
import shutil

import numpy as np
import pytest
import torch

import ntk
from ntk.errors import CheckpointError
from ntk.model.chatnt import ChatNT

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RTOL = 1e-5  # float32 port of a float32 reference: ~1e-6 measured, 1e-5 relative to the values' scale


@pytest.fixture(scope="module")
def chat_dir(golden_dir):
    return golden_dir / "chatnt_tiny"


@pytest.fixture(scope="module")
def model(chat_dir):
    return ntk.load_model(chat_dir)


@pytest.fixture(scope="module")
def z(chat_dir):
    return dict(np.load(chat_dir / "expected.npz"))


def close(got, want):
    got = got.detach().float().numpy() if torch.is_tensor(got) else got
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


def test_load_model_dispatches_to_chatnt(model):
    assert isinstance(model, ChatNT)
    assert model.config.seq_token_id == 48 and model.config.resampled_length == 4
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_golden_parity_main(model, z):
    out = model(z["english_ids"], z["bio_ids"])
    assert out.logits.shape == z["logits"].shape
    close(out.logits, z["logits"])
    close(out.projected_bio_embeddings, z["projected_bio_embeddings"])
    nt = model.encode_dna(torch.as_tensor(z["bio_ids"][:, 0]))
    close(nt, z["nt_embeddings"][:, 0])  # padded rows included (reference's outer-product mask)
    # re-feeding the projected embeddings (what generation does) gives the same logits
    again = model(z["english_ids"], z["bio_ids"], projected_bio_embeddings=out.projected_bio_embeddings)
    assert torch.equal(again.logits, out.logits)


def test_golden_parity_quirk(model, z):
    """Prompts too long for L: the reference truncates and blends the last decoder row; reproduced exactly."""
    out = model(z["quirk_english_ids"], z["quirk_bio_ids"])
    close(out.projected_bio_embeddings, z["quirk_projected_bio_embeddings"])
    close(out.logits, z["quirk_logits"])
    # the 'intended' insertion (R rows before <DNA>, cut to L) differs from the reference on this case
    ids = torch.as_tensor(z["quirk_english_ids"]).long()
    idx = model.dna_positions(ids, 1)
    x = model.decoder.embed(ids)
    rows = []
    for b in range(ids.shape[0]):
        i = int(idx[b, 0])
        rows.append(torch.cat((x[b, :i], out.projected_bio_embeddings[b, 0], x[b, i:]))[: ids.shape[1]])
    intended = model.cleanup(model.decoder.logits(model.decoder(torch.stack(rows))), idx, 4)
    assert not np.allclose(intended.numpy(), z["quirk_logits"], atol=1e-3)


@pytest.mark.parametrize("use_cache", [True, False])
def test_golden_generation(model, z, use_cache):
    got = model.generate(z["english_ids"], z["bio_ids"], max_new_tokens=8, use_cache=use_cache)
    np.testing.assert_array_equal(got.numpy(), z["generated_ids"])
    # writing them into the first pad slots gives the reference's final English ids
    final = z["english_ids"].copy()
    for b in range(final.shape[0]):
        first = int(np.argmax(final[b] == 2))
        new = [t for t in got[b].tolist() if t >= 0]
        final[b, first : first + len(new)] = new
    np.testing.assert_array_equal(final, z["generation_final_english_ids"])


def _prompts(rng, n_rows, L, lengths, K=1, vocab=48, seq=48, pad=2):
    ids = np.full((n_rows, L), pad, dtype=np.int64)
    for b, n in enumerate(lengths):
        row = rng.integers(3, vocab, size=n)
        row[0] = 1
        for p in sorted(rng.choice(np.arange(1, n - 1), size=K, replace=False)):
            row[p] = seq
        ids[b, :n] = row
    return ids


def _bio(rng, n_rows, K, Lb=12, lengths=None):
    bio = np.ones((n_rows, K, Lb), dtype=np.int64)
    for b in range(n_rows):
        for k in range(K):
            n = lengths[(b + k) % len(lengths)] if lengths else Lb
            bio[b, k, 0] = 3
            bio[b, k, 1:n] = rng.integers(4, 40, size=n - 1)
    return bio


@pytest.mark.parametrize("K", [1, 2])
def test_cached_equals_recompute_batched(model, K):
    """Rows of different prompt lengths (and K DNA sequences each) in one batch: identical ids either way."""
    rng = np.random.default_rng(7 + K)
    L = 48
    ids = _prompts(rng, 4, L, [9, 14, 5, 17], K=K)
    bio = _bio(rng, 4, K, lengths=[12, 7, 9])
    n = 14
    idx = model.dna_positions(torch.as_tensor(ids), K)
    assert model.cache_is_exact(torch.as_tensor(ids), idx, 4, n)
    cached = model.generate(ids, bio, max_new_tokens=n, use_cache=True)
    full = model.generate(ids, bio, max_new_tokens=n, use_cache=False)
    assert torch.equal(cached, full)
    assert (cached[:, 0] >= 0).all()
    # each row alone gives the same ids as in the batch
    for b in range(4):
        solo = model.generate(ids[b : b + 1], bio[b : b + 1], max_new_tokens=n)
        assert torch.equal(solo[0], cached[b])


def test_sampling_seeded_and_cache_independent(model):
    rng = np.random.default_rng(3)
    ids = _prompts(rng, 3, 40, [10, 6, 13])
    bio = _bio(rng, 3, 1)
    kw = dict(max_new_tokens=12, temperature=1.5, top_p=0.9)
    a = model.generate(ids, bio, seed=11, use_cache=True, **kw)
    b = model.generate(ids, bio, seed=11, use_cache=False, **kw)
    c = model.generate(ids, bio, seed=11, **kw)
    assert torch.equal(a, b) and torch.equal(a, c)
    others = [model.generate(ids, bio, seed=s, **kw) for s in (12, 13, 14)]
    assert any(not torch.equal(a, o) for o in others)  # the seed matters
    greedy = model.generate(ids, bio, max_new_tokens=12)
    assert any(not torch.equal(greedy, o) for o in [a] + others)


def test_cache_refused_where_reference_differs(model, z):
    """Quirk prompts: the KV cache cannot reproduce the reference, so use_cache=True refuses and the default
    falls back to the reference's full recompute."""
    ids, bio = z["quirk_english_ids"], z["quirk_bio_ids"]
    with pytest.raises(ValueError, match="KV cache would not reproduce"):
        model.generate(ids, bio, max_new_tokens=4, use_cache=True)
    assert torch.equal(model.generate(ids, bio, max_new_tokens=4),
                       model.generate(ids, bio, max_new_tokens=4, use_cache=False))


def test_placeholder_count_must_match(model, z):
    ids = z["english_ids"].copy()
    ids[0, 3] = 48  # two <DNA> in row 0, one sequence
    with pytest.raises(ValueError, match="row 0 has 2 <DNA> placeholder"):
        model(ids, z["bio_ids"])
    ids = z["english_ids"].copy()
    ids[1, 9] = 5  # no <DNA> in row 1
    with pytest.raises(ValueError, match="row 1 has 0"):
        model.generate(ids, z["bio_ids"], max_new_tokens=2)


def test_weights_strictly_checked(chat_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    sd = load_file(str(chat_dir / "model.safetensors"))
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(chat_dir / "config.json", d / "config.json")
    key = "chat_nt_decoder/llama_decoder/~/final_RMS_norm/scale"
    save_file({k: v for k, v in sd.items() if k != key}, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="1 missing: " + key.replace("~", "~")):
        ntk.load_model(d)
    # the raw joblib prefixes (bio_brain_*) are accepted as the reference's renaming does
    ren = {k.replace("chat_nt_encoder/", "bio_brain_encoder/").replace("chat_nt_decoder/", "bio_brain_decoder/"): v
           for k, v in sd.items()}
    save_file(ren, str(d / "model.safetensors"))
    assert isinstance(ntk.load_model(d), ChatNT)


def test_pytorch_port_names_refused(chat_dir, tmp_path):
    """Tensor names of the HF PyTorch port cannot be mapped with certainty: refuse and point to the converter."""
    from safetensors.torch import save_file

    d = tmp_path / "port"
    d.mkdir()
    cfg = json.loads((chat_dir / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg))
    save_file({"biobrain_decoder.gpt_model.token_embed.weight": torch.zeros(48, 32)}, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="ntk models convert chatnt"):
        ntk.load_model(d)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.1), (torch.float16, 0.02)])
def test_low_precision(chat_dir, z, dtype, tol):
    """bf16/fp16 (for GPUs; runs on CPU too): weights load in that dtype directly, logits stay within the format's
    rounding (bf16 keeps 8 mantissa bits, fp16 11, over ~6 matmul stages), generation runs."""
    m = ntk.load_model(chat_dir, dtype=dtype)
    assert m.dtype == dtype and m.decoder.lm_head.weight.dtype == dtype
    out = m(z["english_ids"], z["bio_ids"])
    assert out.logits.dtype == dtype
    err = np.abs(out.logits.float().numpy() - z["logits"]).max() / np.abs(z["logits"]).max()
    assert err < tol
    ids = m.generate(z["english_ids"], z["bio_ids"], max_new_tokens=8)
    assert ids.shape == (2, 8) and (ids[:, 0] >= 0).all()
