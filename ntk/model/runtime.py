"""Device and precision selection (cuda, xla, mps, cpu; fp32, bf16, fp16)."""
from __future__ import annotations

import os

import torch

from ..errors import NtkError

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "16": torch.float16, "half": torch.float16,
}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device(f"cuda:{local % max(torch.cuda.device_count(), 1)}")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "xla":
        try:
            import torch_xla.core.xla_model as xm  # type: ignore
        except ImportError:
            raise NtkError("--device xla needs torch-xla: pip install 'ntk[tpu]'") from None
        return xm.xla_device()
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NtkError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise NtkError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise NtkError("--device mps: MPS is not available on this machine")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise NtkError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N, xla, mps)")


def resolve_dtype(precision: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(precision, torch.dtype):
        return precision
    p = (precision or "auto").lower()
    if p == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "xla":
            return torch.bfloat16
        return torch.float32
    if p not in _DTYPES:
        raise NtkError(f"unknown precision {precision!r} (auto, fp32, bf16, fp16)")
    return _DTYPES[p]


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
