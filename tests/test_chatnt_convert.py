"""`ntk models convert chatnt`: the JAX release layout (a joblib pickle of Haiku params) -> safetensors, through a
restricted unpickler that refuses anything but arrays and plain containers."""
import json
import os
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import ntk
from ntk.errors import CheckpointError
from ntk.model.chatnt_convert import convert_chatnt
from ntk.model.joblib_safe import UnsafePickleError, load_arrays

pytestmark = pytest.mark.usefixtures("one_torch_thread")
joblib = pytest.importorskip("joblib")  # writes the files exactly as the release was written


def haiku_params(golden_dir):
    """The golden arrays as the release stores them: nested {module: {param: array}} with bio_brain_* prefixes."""
    flat = load_file(str(golden_dir / "chatnt_tiny" / "model.safetensors"))
    nested = {}
    for k, v in flat.items():
        module, param = k.rsplit("/", 1)
        module = module.replace("chat_nt_encoder/", "bio_brain_encoder/").replace("chat_nt_decoder/", "bio_brain_decoder/")
        nested.setdefault(module, {})[param] = v
    return flat, nested


def release_dir(tmp_path, golden_dir, params, compress=0):
    src = tmp_path / "ChatNT"
    (src / "jax_params").mkdir(parents=True)
    joblib.dump(params, src / "jax_params" / "params.joblib", compress=compress)
    shutil.copy(golden_dir / "chatnt_tiny" / "config.json", src / "config.json")
    (src / "english_tokenizer").mkdir()
    (src / "english_tokenizer" / "tokenizer_config.json").write_text("{}")
    return src


def test_convert_round_trip_cli(golden_dir, tmp_path):
    from conftest import run_ntk

    flat, nested = haiku_params(golden_dir)
    src = release_dir(tmp_path, golden_dir, nested)
    dst = tmp_path / "converted"
    p = run_ntk("models", "convert", "chatnt", src / "jax_params", dst)
    assert p.returncode == 0, p.stderr
    out = load_file(str(dst / "model.safetensors"))
    assert sorted(out) == sorted(flat)
    for k in flat:
        assert out[k].dtype == flat[k].dtype and np.array_equal(out[k], flat[k]), k
    assert (dst / "english_tokenizer" / "tokenizer_config.json").is_file()
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["model_type"] == "chatnt" and cfg["gpt_config"]["num_layers"] == 2
    # same outputs as the golden reference
    z = np.load(golden_dir / "chatnt_tiny" / "expected.npz")
    m = ntk.load_model(dst)
    o = m(z["english_ids"], z["bio_ids"])
    np.testing.assert_allclose(o.logits.numpy(), z["logits"], rtol=1e-5, atol=1e-5 * np.abs(z["logits"]).max())
    assert np.array_equal(m.generate(z["english_ids"], z["bio_ids"], max_new_tokens=8).numpy(), z["generated_ids"])
    # refuses to overwrite without --force
    p = run_ntk("models", "convert", "chatnt", src, dst)
    assert p.returncode == 2 and "exists (use --force" in p.stderr


@pytest.mark.parametrize("compress", [3, ("gzip", 1), ("xz", 1)])
def test_convert_compressed_and_fp16(golden_dir, tmp_path, compress):
    flat, nested = haiku_params(golden_dir)
    src = release_dir(tmp_path, golden_dir, nested, compress=compress)
    dst = convert_chatnt(src, tmp_path / "out", dtype="fp16")
    out = load_file(str(dst / "model.safetensors"))
    for k in flat:
        assert out[k].dtype == np.float16 and np.array_equal(out[k], flat[k].astype(np.float16)), k
    assert isinstance(ntk.load_model(dst, dtype=torch.float32), ntk.model.chatnt.ChatNT)


def test_release_directory_points_to_converter(golden_dir, tmp_path):
    _, nested = haiku_params(golden_dir)
    src = release_dir(tmp_path, golden_dir, nested)
    with pytest.raises(CheckpointError, match="convert it once to safetensors: ntk models convert chatnt"):
        ntk.load_model(src)


class _Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("kind", ["os.system", "exec", "object array", "plain pickle"])
def test_malicious_payload_is_refused_and_never_runs(golden_dir, tmp_path, kind):
    marker = tmp_path / "PWNED"
    _, nested = haiku_params(golden_dir)
    src = tmp_path / "evil"
    (src / "jax_params").mkdir(parents=True)
    target = src / "jax_params" / "params.joblib"
    payload = {"os.system": _Shell(marker), "exec": _Exec(marker),
               "object array": np.array([_Shell(marker), 1], dtype=object), "plain pickle": _Exec(marker)}[kind]
    nested["bio_brain_decoder/llama_decoder/~/final_RMS_norm"]["scale"] = payload
    if kind == "plain pickle":
        with open(target, "wb") as f:
            pickle.dump(nested, f, protocol=4)
    else:
        joblib.dump(nested, target)
    with pytest.raises(UnsafePickleError, match="refus"):
        load_arrays(target)
    with pytest.raises(CheckpointError, match=r"refused: .*(refusing to load global (posix|nt|builtins)\.|object)"):
        convert_chatnt(src, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    # control: the same payload through the ordinary loader does run (so the test would catch a leak)
    if kind == "os.system" and sys.platform != "win32":
        joblib.load(target)
        assert marker.exists()


def test_shapes_and_names_checked_before_writing(golden_dir, tmp_path):
    flat, nested = haiku_params(golden_dir)
    src = release_dir(tmp_path, golden_dir, nested)
    (src / "config.json").unlink()  # falls back to the released (7B) configuration: nothing matches
    with pytest.raises(CheckpointError, match=r"do not match the ChatNT configuration: \d+ missing: .*wrong shape"):
        convert_chatnt(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    shutil.copy(golden_dir / "chatnt_tiny" / "config.json", src / "config.json")
    del nested["bio_brain_decoder/llama_decoder/~/final_RMS_norm"]
    nested["extra/module"] = {"w": np.zeros(3, np.float32)}
    joblib.dump(nested, src / "jax_params" / "params.joblib")
    with pytest.raises(CheckpointError, match=r"1 missing: chat_nt_decoder/llama_decoder/~/final_RMS_norm/scale; "
                                              r"1 unexpected: extra/module/w"):
        convert_chatnt(src, tmp_path / "out")
