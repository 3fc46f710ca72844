"""Checks made before a model is allocated: config.json against the checkpoint's tensor shapes (read from the
safetensors headers, compared with the model built on the meta device) and the memory the parameters need against
what the device has. Absurd sizes in a config end with one line saying how much memory they would need, never
with an allocation failure or an out-of-memory kill."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from .adapters import ADAPTER_KEY, apply_adapters
from .checkpoint import _mismatch, _normalise_keys, build_model, weight_files
from .config import NTConfig
from .nt import NucleotideTransformer

_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def checkpoint_shapes(directory: Path) -> tuple[dict[str, tuple[int, ...]], int] | None:
    """Tensor shapes and total bytes of a checkpoint's weights without reading them (the safetensors headers);
    None when they cannot be known cheaply (a pickled ``.bin``)."""
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    total = 0
    for path in weight_files(directory):
        if path.suffix != ".safetensors":
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():
                    sl = f.get_slice(k)
                    shape = tuple(int(x) for x in sl.get_shape())
                    shapes[k] = shape
                    n = 1
                    for x in shape:
                        n *= x
                    total += n * _ST_BYTES.get(str(sl.get_dtype()), 4)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return shapes, total


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device`` (CPU: MemAvailable; CUDA: free memory); None if unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except Exception:  # noqa: BLE001 - no driver information: do not guess
            return None
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def check_fits_in_memory(cfg: NTConfig, where: str, bytes_per_param: int = 4, extra_bytes: int = 0,
                         device: torch.device | str = "cpu", lm_head: bool | None = None,
                         model: NucleotideTransformer | None = None) -> int:
    """Refuse (before allocating anything) a model whose parameters cannot fit in the memory of ``device``;
    ``bytes_per_param``: 4 to hold fp32 weights, 16 to train them with Adam. Returns the parameter count."""
    avail = available_memory(device)
    n = estimate_parameters(cfg)  # a lower bound from the sizes alone: absurd sizes never reach torch
    if avail is None or n * bytes_per_param + extra_bytes <= avail:
        if model is None:
            try:
                with torch.device("meta"):
                    model = NucleotideTransformer(cfg, lm_head=lm_head)
            except RuntimeError as e:
                raise CheckpointError(f"{where}: the sizes in config.json do not make a model that can be built "
                                      f"({str(e).splitlines()[0][:120]})") from None
        n = sum(t.numel() for t in model.state_dict().values())
    need = n * bytes_per_param + extra_bytes
    if avail is not None and need > avail:
        raise CheckpointError(
            f"{where}: a model of {n:,} parameters (hidden_size {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
            f"intermediate_size {cfg.intermediate_size}) needs about {_gib(need)} of memory, {_gib(avail)} is "
            f"available on {torch.device(device).type}; check the sizes in config.json")
    return n


def estimate_parameters(cfg: NTConfig) -> int:
    """Parameters of the encoder and LM head from the config's sizes alone (a lower bound: heads left out)."""
    H, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    emb = V * H + (0 if cfg.rotary else cfg.max_position_embeddings * H)
    ffn = (H * 2 * F + F * H) if cfg.glu else (2 * H * F + F + H)
    layer = 4 * H * H + 4 * H + ffn + 4 * H
    return emb + L * layer + 2 * H


def check_before_loading(directory: Path, cfg: NTConfig) -> None:
    """Compare config.json with the checkpoint's tensor shapes (read from the safetensors headers, the model
    built on the meta device), then the memory needed: a config that does not describe these weights, or a
    model that cannot fit, is refused before any tensor is allocated."""
    found = checkpoint_shapes(directory)
    if found is None:
        return
    shapes, nbytes = found
    shapes = _normalise_keys(shapes)
    where = str(directory / "config.json")
    try:
        with torch.device("meta"):
            meta = build_model(cfg, set(shapes))
            adapter = cfg.extra.get(ADAPTER_KEY)
            if adapter:
                apply_adapters(meta, adapter)
    except Exception:  # noqa: BLE001 - sizes too large to build even without memory, or an unusual layout
        check_fits_in_memory(cfg, where, 4, nbytes, "cpu")  # refuses absurd sizes with the numbers
        return  # else load_into checks the shapes after loading
    problems = _mismatch({k: tuple(v.shape) for k, v in meta.state_dict().items()}, shapes, cfg)
    if problems:
        raise CheckpointError(f"{directory}: weights do not match config.json: " + problems)
    check_fits_in_memory(cfg, where, 4, nbytes, "cpu", model=meta)
