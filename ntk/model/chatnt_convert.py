"""``ntk models convert chatnt SRC DST``: the JAX release of ChatNT (``jax_params/params.joblib``) -> safetensors.

The output directory holds ``config.json`` (the reference's three configs plus ids; the released values unless
SRC has its own reference-style ``config.json`` or ``--config`` gives one), ``model.safetensors`` with every
array unchanged under its Haiku name (``bio_brain_*`` renamed ``chat_nt_*`` as the reference's loader does),
and the ``english_tokenizer/`` / ``bio_tokenizer/`` folders of the release when they sit next to
``jax_params/``. The pickle is read by :mod:`ntk.model.joblib_safe` (arrays and plain containers only), every
name and shape is checked against the config before anything is written, and the directory appears atomically.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .chatnt import (_UNUSED, RELEASE_CONFIG, ChatNTConfig, canonical_haiku_name, haiku_name_map,
                     is_chatnt_config)
from .joblib_safe import UnsafePickleError, flatten_params, load_arrays, write_safetensors

_REFERENCE_KEYS = ("gpt_config", "nt_config", "perceiver_resampler_config")
_READ_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, OSError)


def find_params(src: Path) -> tuple[Path, Path]:
    """(params file, release root) for SRC = the .joblib file, ``jax_params/`` or the release root."""
    src = Path(src).expanduser()
    if src.is_file():
        root = src.parent.parent if src.parent.name == "jax_params" else src.parent
        return src, root
    if src.is_dir():
        for cand in (src / "jax_params" / "params.joblib", src / "params.joblib"):
            if cand.is_file():
                return cand, (src if cand.parent == src / "jax_params" else
                              (src.parent if src.name == "jax_params" else src))
        raise CheckpointError(f"{src}: no params.joblib (expected SRC/jax_params/params.joblib or SRC/params.joblib)")
    raise CheckpointError(f"{src}: no such file or directory")


def _config_for(root: Path, config: str | os.PathLike | None) -> tuple[dict, str]:
    if config is not None:
        try:
            d = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"--config {config}: unreadable ({e})") from None
        return d, str(config)
    p = root / "config.json"
    if p.is_file():
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            d = {}
        if isinstance(d, dict) and all(k in d for k in _REFERENCE_KEYS):
            return d, str(p)
    return json.loads(json.dumps(RELEASE_CONFIG)), "the released ChatNT configuration (reference get_chatNT())"


def convert_chatnt(src, dst, config=None, dtype: str = "keep", force: bool = False, log=None) -> Path:
    """Convert; returns DST. ``dtype``: keep | fp32 | fp16 (floating arrays only)."""
    log = log or (lambda *_: None)
    params, root = find_params(Path(src))
    dst = Path(dst).expanduser()
    if dst.exists() and not force:
        raise CheckpointError(f"{dst}: exists (use --force to replace it)")
    cast = {"keep": None, "fp32": np.float32, "fp16": np.float16}.get(dtype, "bad")
    if isinstance(cast, str):
        raise CheckpointError(f"--dtype {dtype!r}: expected keep, fp32 or fp16")
    raw, cfg_source = _config_for(root, config)
    if not is_chatnt_config(raw) or not all(k in raw for k in _REFERENCE_KEYS):
        raise CheckpointError(f"{cfg_source}: not a ChatNT reference configuration (needs {', '.join(_REFERENCE_KEYS)})")
    raw = dict(raw, model_type="chatnt")
    cfg = ChatNTConfig(raw)
    log(f"reading {params} (restricted unpickler: arrays and plain containers only)")
    try:
        arrays = flatten_params(load_arrays(params))
    except UnsafePickleError as e:
        raise CheckpointError(f"{params}: refused: {e}") from None
    except _READ_ERRORS as e:
        raise CheckpointError(f"{params}: not a readable joblib/pickle file ({type(e).__name__}: {e})") from None
    arrays = {canonical_haiku_name(k): v for k, v in arrays.items()}
    _check(arrays, cfg, params)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        log(f"writing {len(arrays)} arrays ({sum(a.nbytes for a in arrays.values()) / 1e9:.2f} GB as read)")
        write_safetensors(arrays, tmp / "model.safetensors",
                          metadata={"format": "haiku", "source": str(params), "converted_by": "ntk models convert"},
                          cast=cast)
        cfg.to_json(tmp / "config.json")
        for sub in ("english_tokenizer", "bio_tokenizer"):
            if (root / sub).is_dir():
                shutil.copytree(root / sub, tmp / sub)
                log(f"copied {root / sub}")
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            dst.rename(old)
            tmp.rename(dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _check(arrays: dict[str, np.ndarray], cfg: ChatNTConfig, where: Path) -> None:
    """Every parameter the config implies is present with its shape; nothing unknown."""
    import torch

    from .chatnt import ChatNT

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ChatNT(cfg).state_dict().items()}
    names = haiku_name_map(cfg)
    missing = [k for k in names if k not in arrays]
    unexpected = [k for k in arrays if k not in names and not any(u in k for u in _UNUSED)]
    wrong = []
    for k, (dst, transpose) in names.items():
        if k in arrays:
            shp = tuple(arrays[k].shape)
            if transpose and len(shp) == 2:
                shp = shp[::-1]
            if shp != shapes[dst]:
                wrong.append(f"{k} {tuple(arrays[k].shape)}")
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                parts.append(f"{len(items)} {label}: " + ", ".join(items[:3]) + (" ..." if len(items) > 3 else ""))
        raise CheckpointError(f"{where}: arrays do not match the ChatNT configuration: " + "; ".join(parts))
