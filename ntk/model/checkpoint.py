"""Load and save HF-layout checkpoints safely (safetensors, or ``torch.load(weights_only=True)``).

A checkpoint is a directory with ``config.json`` and one of: ``model.safetensors``,
``model.safetensors.index.json`` (sharded), ``pytorch_model.bin`` or ``pytorch_model.bin.index.json``.
Nothing from the directory is ever executed (no ``trust_remote_code``): the architecture comes from
ntk's own code, configured by ``config.json``.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError
from .adapters import ADAPTER_KEY, apply_adapters, merge_adapters
from .config import PRESETS, NTConfig
from .ntv3_config import MODEL_TYPES as NTV3_MODEL_TYPES
from .ntv3_config import NTV3_PRESETS
from .nt import NucleotideTransformer
from .runtime import resolve_device, resolve_dtype

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "models"
EMBEDDED_DEFAULT = "ntk-yeast-tiny"

# keys that released checkpoints may carry and that ntk's architecture does not use
_IGNORABLE_SUFFIXES = ("rotary_embeddings.inv_freq", "embeddings.position_ids")
_IGNORABLE_PREFIXES = ("esm.contact_head.", "esm.pooler.")


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def find_in_hf_cache(repo_id: str) -> Path | None:
    """Local snapshot directory of an HF repo (refs/main first, else the newest snapshot with a config)."""
    root = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snaps = root / "snapshots"
    if not snaps.is_dir():
        return None
    ref = root / "refs" / "main"
    if ref.is_file():
        cand = snaps / ref.read_text().strip()
        if (cand / "config.json").is_file():
            return cand
    found = [p for p in snaps.iterdir() if (p / "config.json").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve_model_path(path_or_name: str | os.PathLike | None) -> Path:
    """Directory for a path, a preset name, an HF repo id found in the cache, or None (embedded default)."""
    if path_or_name is None or str(path_or_name) in ("", "default", EMBEDDED_DEFAULT):
        p = EMBEDDED_DIR / EMBEDDED_DEFAULT
        if not (p / "config.json").is_file():
            raise CheckpointError(f"the embedded default model is missing from the installation ({p}); "
                                  "reinstall ntk or pass --model DIR")
        return p
    s = str(path_or_name)
    p = Path(s).expanduser()
    if p.is_dir():
        return p
    if p.is_file() and p.name == "config.json":
        return p.parent
    if (EMBEDDED_DIR / s / "config.json").is_file():
        return EMBEDDED_DIR / s
    if s == "chatnt":  # ChatNT preset (model/chatnt.py; not an NTConfig preset)
        from .chatnt import RELEASE_REPO
        hit = find_in_hf_cache(RELEASE_REPO)
        if hit is not None:
            return hit
        raise CheckpointError(f"model 'chatnt' ({RELEASE_REPO}) is not in the local HF cache ({hf_cache_dir()}); "
                              "download it on a machine with network, convert it with `ntk models convert chatnt "
                              "SNAPSHOT/jax_params DIR` and pass -m DIR")
    looks_like_path = s.startswith(("/", ".", "~")) or s.count("/") > 1
    if s not in PRESETS and s not in NTV3_PRESETS and looks_like_path:
        raise CheckpointError(f"model {s!r}: no such checkpoint directory")
    repo = PRESETS[s][0] if s in PRESETS else NTV3_PRESETS[s][0] if s in NTV3_PRESETS else (s if "/" in s else None)
    if s in PRESETS and repo is None:
        raise CheckpointError(f"preset {s!r} is a training configuration without released weights; "
                              f"use it with `ntk pretrain --config {s}`")
    if repo is not None:
        hit = find_in_hf_cache(repo)
        if hit is not None:
            return hit
        raise CheckpointError(
            f"model {s!r} ({repo}) is not in the local HF cache ({hf_cache_dir()}); ntk never downloads at run "
            f"time: run `ntk models download {s}` on a machine with network, or pass --model DIR")
    raise CheckpointError(f"model {s!r}: no such directory, preset or cached HF repo "
                          f"(presets: {', '.join([k for k, v in PRESETS.items() if v[0]] + list(NTV3_PRESETS))})")


# ------------------------------------------------------------------------------------------------
def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        what = re.sub(r"\s+", " ", what)[:160]
        raise CheckpointError(
            f"{path}: refusing to load: the pickle needs code execution to unpickle"
            f"{' (' + what + ')' if what else ''}; only plain tensors are accepted (convert it to safetensors)") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({str(e).splitlines()[0][:200]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a flat dictionary of tensors")
    return obj


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint: the shards named by a shard index (each one inside ``directory``, after
    symlinks: an absolute name or one that leads outside is refused), else the single weights file."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{index}: malformed shard index ({e})") from None
            root = directory.resolve()
            files = []
            for shard in shards:
                if not isinstance(shard, str) or not shard:
                    raise CheckpointError(f"{index}: shard name {shard!r} is not a file name")
                path = directory / shard
                if Path(shard).is_absolute() or not path.resolve().is_relative_to(root):
                    raise CheckpointError(f"{index}: shard {shard!r} lies outside the checkpoint directory "
                                          f"(absolute path, '..' or a symlink out); refusing to read it")
                if not path.is_file():
                    raise CheckpointError(f"{index}: shard {shard} is missing")
                files.append(path)
            return files
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return [directory / name]
    raise CheckpointError(f"{directory}: no weights (model.safetensors, pytorch_model.bin or a shard index)")


def load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        sd.update(_load_file(path))
    return sd


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # a bare EsmModel saves "embeddings.*"/"encoder.*" without the "esm." prefix
    if not any(k.startswith("esm.") for k in sd) and any(k.startswith(("embeddings.", "encoder.")) for k in sd):
        sd = {("esm." + k if k.startswith(("embeddings.", "encoder.")) else k): v for k, v in sd.items()}
    # legacy LayerNorm parameter names (TF-era checkpoints; also what some transformers versions write)
    if any(k.endswith(("LayerNorm.gamma", "LayerNorm.beta", "layer_norm.gamma", "layer_norm.beta")) for k in sd):
        sd = {(k[:-6] + ".weight" if k.endswith(".gamma") else k[:-5] + ".bias" if k.endswith(".beta") else k): v
              for k, v in sd.items()}
    return sd


def build_model(cfg: NTConfig, sd_keys: set[str] | None = None) -> NucleotideTransformer:
    lm = None
    if sd_keys is not None:
        lm = any(k.startswith("lm_head.") for k in sd_keys) or (
            not cfg.is_segmentation and any(a.endswith("MaskedLM") for a in cfg.architectures or []))
    labels = None
    if sd_keys is not None and any(k.startswith("classifier.") for k in sd_keys):
        w = [k for k in sd_keys if k == "classifier.out_proj.weight"]
        labels = cfg.num_labels if w else None
    return NucleotideTransformer(cfg, lm_head=lm, seq_head_labels=labels)


def _mismatch(want: dict[str, tuple], have: dict[str, tuple], cfg: NTConfig) -> str:
    """What differs between the tensor shapes a config builds (``want``) and a checkpoint's (``have``)."""
    missing = [k for k in want if k not in have]
    unexpected, mismatched = [], []
    for k, shape in have.items():
        if k not in want:
            if k.endswith(_IGNORABLE_SUFFIXES) or k.startswith(_IGNORABLE_PREFIXES):
                continue
            if k == "esm.embeddings.position_embeddings.weight" and cfg.rotary:
                continue  # v2 checkpoints carry an unused learned position table
            unexpected.append(k)
        elif tuple(shape) != tuple(want[k]):
            mismatched.append(f"{k} {tuple(shape)} != expected {tuple(want[k])}")
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if items:
            shown = ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    return "; ".join(parts)


def load_into(model: NucleotideTransformer, sd: dict[str, torch.Tensor], where: str) -> None:
    want = model.state_dict()
    sd = _normalise_keys(sd)
    problems = _mismatch({k: tuple(v.shape) for k, v in want.items()}, {k: tuple(v.shape) for k, v in sd.items()},
                         model.config)
    if problems:
        raise CheckpointError(f"{where}: weights do not match config.json: " + problems)
    model.load_state_dict({k: sd[k] for k in want}, strict=True)


def _is_chatnt(directory: Path) -> bool:
    try:
        d = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    from .chatnt import is_chatnt_config
    return isinstance(d, dict) and is_chatnt_config(d)


def read_config(path_or_name=None):
    """The config of a model (NTConfig or NTv3Config) from its config.json alone, no weights read: what the
    window rules (``cfg.check_window``) need before a job loads the model. None for ChatNT checkpoints."""
    directory = resolve_model_path(path_or_name)
    if _is_chatnt(directory):
        return None
    if _model_type(directory) in NTV3_MODEL_TYPES:
        from .ntv3_config import NTv3Config

        return NTv3Config.from_json(directory / "config.json")
    return NTConfig.from_json(directory / "config.json")


def check_window_before_loading(model, window: int | None, job: str) -> None:
    """Refuse a ``--window`` the model cannot take from its config.json, before any weights load (``model``: a
    path or preset name; a loaded model is checked by the job itself)."""
    if window is None or isinstance(model, torch.nn.Module):
        return
    cfg = read_config(model)
    if cfg is not None:
        cfg.check_window(window, job)


def load_model(path_or_name: str | os.PathLike | torch.nn.Module | None = None, device="cpu",
               dtype=torch.float32) -> NucleotideTransformer:
    """Load a model for inference (eval mode) from a directory, preset name, cached HF repo, or the default (None).
    A model that is already loaded is returned as it is (on its own device and dtype)."""
    if isinstance(path_or_name, torch.nn.Module):
        return path_or_name
    directory = resolve_model_path(path_or_name)
    if _is_chatnt(directory):  # ChatNT: its own config and weights layout (model/chatnt.py)
        from .chatnt import load_chatnt
        return load_chatnt(directory, device=device, dtype=dtype)
    if _model_type(directory) in NTV3_MODEL_TYPES:
        return _finish(_load_ntv3(directory), directory, device, dtype)
    cfg = NTConfig.from_json(directory / "config.json")
    from .preflight import check_before_loading

    check_before_loading(directory, cfg)  # config vs tensor shapes, and memory, before allocating anything
    sd = _normalise_keys(load_state_dict(directory))
    model = build_model(cfg, set(sd))
    adapter = cfg.extra.get(ADAPTER_KEY)
    if adapter:  # an `ntk finetune --method lora|ia3` checkpoint saved without --merge: fold adapters in
        try:
            apply_adapters(model, adapter)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{directory}: config.json {ADAPTER_KEY}: {e}") from None
    load_into(model, sd, str(directory))
    if adapter:
        merge_adapters(model)
        cfg.extra.pop(ADAPTER_KEY)
    return _finish(model, directory, device, dtype, cfg)


def _finish(model, directory: Path, device, dtype, cfg: NTConfig | None = None):
    """To the device/dtype, eval mode, no gradients; ``cfg`` (NT models): the accelerator memory preflight."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if dev.type == "cuda" and cfg is not None:  # the weights must fit in the accelerator's free memory too
        from .preflight import check_fits_in_memory

        check_fits_in_memory(cfg, str(directory / "config.json"), torch.finfo(dt).bits // 8, device=dev, model=model)
    model = model.to(device=dev, dtype=dt).eval()
    model.source = str(directory)
    model.requires_grad_(False)
    return model


ZERO_SHOT_KEY = "zero_shot_informative"  # config.json: false = the model card says zero-shot scores mean nothing
_CARD_NAMES = ("README.md", "MODEL_CARD.md")
_CARD_MARK = "zero-shot scores: not informative"


def zero_shot_not_informative(model: NucleotideTransformer) -> str | None:
    """Why this model's zero-shot scores (``ntk score-variants``) are not informative, or None: the embedded
    default model (trained on one small genome), a config.json with ``"zero_shot_informative": false``, or a
    model card (README.md / MODEL_CARD.md in the checkpoint directory) with the line
    ``zero-shot scores: not informative``."""
    if model.config.extra.get(ZERO_SHOT_KEY) is False:
        return f"its config.json says {ZERO_SHOT_KEY}: false"
    source = getattr(model, "source", None)
    if not source:
        return None
    d = Path(source)
    try:
        if d.resolve() == (EMBEDDED_DIR / EMBEDDED_DEFAULT).resolve():
            return f"it is ntk's small embedded model {EMBEDDED_DEFAULT}"
    except OSError:
        return None
    for name in _CARD_NAMES:
        card = d / name
        try:
            if card.is_file() and _CARD_MARK in card.read_text(errors="replace").lower():
                return f"its model card ({card.name}) says so"
        except OSError:
            continue
    return None


def _host() -> str:
    import socket

    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]


def _model_type(directory: Path) -> str | None:
    try:
        d = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None  # NTConfig.from_json reports it
    return d.get("model_type") if isinstance(d, dict) else None


def _load_ntv3(directory: Path):
    from .ntv3 import build_from_state_dict
    from .ntv3_config import NTv3Config

    cfg = NTv3Config.from_json(directory / "config.json")
    try:
        return build_from_state_dict(cfg, load_state_dict(directory), str(directory))
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def save_model(model: NucleotideTransformer, directory: str | os.PathLike, extra_files: dict[str, str] | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically (temp dir + rename) in the HF layout."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # owner-tagged name (see io/atomic.py): a later run removes it if this process dies before the rename
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.ntk-tmp-{os.getpid()}@{_host()}-", dir=directory.parent))
    try:
        cfg = model.config
        cfg.to_json(tmp / "config.json")
        sd = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.ntk-old-{os.getpid()}@{_host()}-",
                                        dir=directory.parent))
            directory.rename(old / directory.name)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
