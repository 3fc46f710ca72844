"""Device and precision selection (cuda, xla, mps, cpu; fp32, bf16, fp16; fp8: ``ntk/model/fp8.py``)."""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass

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
    if p == "fp8":  # the inference jobs get it through choose_precision; other commands have no fp8 path
        raise NtkError("--precision fp8 is for segment, embed and score-variants only (here: auto, fp32, bf16, "
                       "fp16)")
    if p not in _DTYPES:
        raise NtkError(f"unknown precision {precision!r} (auto, fp32, bf16, fp16, fp8)")
    return _DTYPES[p]


# CPU flags (Linux /proc/cpuinfo names) meaning the CPU multiplies bf16 natively: AVX-512 BF16 dot products
# (Cooper Lake, Zen 4/5, Sapphire Rapids+) or AMX tiles (Sapphire Rapids+). Without them torch runs bf16 matmuls
# through fp32 conversions, slower than fp32 itself.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# tasks whose outputs were measured in bf16 against fp32 on the CPU and stay within the bounds in
# bench/RESULTS.md ("bf16 accuracy on the CPU"): only these get bf16 from --precision auto on a bf16 CPU.
# score-variants (small ref/alt embedding differences) and embed keep fp32 until measured.
CPU_BF16_TASKS = ("segment",)
# the bounds that measurement stays within (bench/bf16_accuracy.py; checked on the golden model by
# tests/test_cpu_speed.py): the largest |p_bf16 - p_fp32| of any feature at any position, and the fraction of
# (position, feature) calls that flip at the 0.5 threshold
CPU_BF16_BOUNDS = {"max_abs_dp": 0.01, "call_flip_fraction": 5e-3}


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (Linux); ``None`` where they cannot be
    read (macOS, Windows, a restricted container). ``cpuinfo``: the file's text, for tests."""
    if cpuinfo is None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read(200_000)
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):  # x86: flags; ARM: Features
            return set(value.split())
    return None


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype
    reason: str
    fp8: bool = False  # the trunk's linear layers in float8 (ntk/model/fp8.py); ``dtype`` is the rest's (bf16)

    @property
    def name(self) -> str:
        if self.fp8:
            return "fp8"
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, str(self.dtype))

    def as_json(self) -> dict:
        return {"dtype": self.name, "reason": self.reason}


def choose_precision(precision: str | torch.dtype | None, device: torch.device, task: str | None = None,
                     flags: set[str] | None | bool = True, machine: str | None = None) -> Precision:
    """The compute dtype for ``precision`` on ``device``, with the reason (printed at start, kept in run.json).

    ``auto`` on a CPU picks bf16 only where the CPU multiplies bf16 natively (:data:`CPU_BF16_FLAGS`, x86-64)
    and ``task`` is one whose bf16 accuracy was measured (:data:`CPU_BF16_TASKS`); fp32 elsewhere (no native bf16,
    ARM or another OS where the flags cannot be read, or a task not validated in bf16). ``flags``: the CPU flags
    (``True``: read them from this machine; ``None``: unknown) and ``machine`` (``platform.machine()``), for tests.
    """
    if isinstance(precision, str) and precision.lower() == "fp8":
        from .fp8 import check_fp8_device

        check_fp8_device(device)
        where = "the CPU: torch's float8 matmul, for accuracy checks (not a speed path)" if device.type == "cpu" \
            else f"{device.type}: FP8 tensor cores"
        return Precision(torch.bfloat16, f"requested: encoder linears in float8 e4m3 (per-row scales) on {where}; "
                         "the rest in bf16", fp8=True)
    if isinstance(precision, torch.dtype) or (precision or "auto").lower() != "auto":
        dt = resolve_dtype(precision, device)
        return Precision(dt, "requested")
    if device.type != "cpu":
        dt = resolve_dtype("auto", device)
        return Precision(dt, f"auto on {device.type}")
    if flags is True:
        flags = cpu_flags()
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in ("x86_64", "amd64"):
        return Precision(torch.float32, f"auto: a {machine or 'non-x86'} CPU (bf16 speed not measured there)")
    if flags is None:
        return Precision(torch.float32, "auto: CPU flags unreadable on this system")
    native = [f for f in CPU_BF16_FLAGS if f in flags]
    if not native:
        return Precision(torch.float32, "auto: this CPU has no native bf16 (no avx512_bf16/amx_bf16)")
    if task not in CPU_BF16_TASKS:
        return Precision(torch.float32, f"auto: CPU has {'+'.join(native)}, but {task or 'this command'}'s outputs "
                         "are not validated in bf16")
    return Precision(torch.bfloat16, f"auto: CPU has {'+'.join(native)}; {task} accuracy vs fp32 within the bounds "
                     "in bench/RESULTS.md")


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
