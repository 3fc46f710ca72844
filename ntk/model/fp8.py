"""FP8 inference (``--precision fp8``, issue #19): the encoder's linear layers in float8 e4m3.

The model is loaded in bf16, then :func:`to_fp8` replaces the linear layers of the transformer trunk -- attention
q/k/v and output projections and the feed-forward layers of every block (NT v1/v2, SegmentNT, AgroNT; NTv3) -- by
:class:`Float8Linear`. Everything else stays bf16: embeddings, LayerNorms (float32 inside), softmax/attention,
the residual stream (float32 in the NT encoder), and the heads (LM head, SegmentNT U-Net, NTv3 tower and heads).

:class:`Float8Linear` computes ``y = x W^T + b`` as

- weights quantised once, per output channel (``scaling="row"``, the default) or per tensor (``"tensor"``):
  ``s_w = amax(|W_n|) / 448``, ``W8 = e4m3(W / s_w)``;
- activations quantised at each call, per row (per token) or per tensor, the same way;
- ``torch._scaled_mm(x8, W8^T, scale_a=s_x, scale_b=s_w, bias=b, out_dtype=bf16)``: products of e4m3 values
  accumulated in float32, scaled back, bias added, rounded once to bf16.

``torch._scaled_mm`` is torch's own (no new dependency); on CUDA it runs on FP8 tensor cores (compute capability
8.9+: Ada, Hopper, Blackwell), and torch 2.13 also implements it on the CPU (products of the e4m3 values in float32:
what :func:`emulated_linear` computes, which is how the tests check the math). The CPU path is allowed: it gives
the same accuracy figures as a GPU (same quantisation, float32 accumulation) but it is not a speed path.

Round-trip error of the quantisation (what the tests derive their bounds from): e4m3 has 3 mantissa bits, so
rounding to nearest a scaled value ``v`` in the normal range (``|v| >= 2**-6``) has relative error at most
``2**-4``; below it (subnormals, spacing ``2**-9``) the absolute error is at most ``2**-10``, i.e.
``2**-10 * s`` in the tensor's own units. Per-row scaling maps each row's largest magnitude onto 448, so every
element within a factor ``448 * 2**6 = 28672`` of its row's largest is a normal value.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import NtkError

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
E4M3_MIN_NORMAL = 2.0 ** -6
E4M3_REL_ERR = 2.0 ** -4  # half a unit in the last place of a 3-bit mantissa, relative to the value
E4M3_SUB_ABS_ERR = 2.0 ** -10  # half the subnormal spacing (2**-9)
CUDA_FP8_CAPABILITY = (8, 9)  # Ada; Hopper is 9.0
# the dimensions torch._scaled_mm accepts on CUDA: inner and output sizes multiples of 16
CUDA_ALIGN = 16
SCALINGS = ("row", "tensor")

# per family: the trunk's linear layers, as module paths relative to one block; and where the blocks are
_NT_BLOCK_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "intermediate.dense", "output.dense")
_NTV3_BLOCK_LINEARS = ("sa_layer.query_head.linear", "sa_layer.key_head.linear", "sa_layer.value_head.linear",
                       "sa_layer.mha_output", "fc1", "fc2")


def fp8_refusal(device: torch.device, capability: tuple[int, int] | None = None) -> str | None:
    """Why ``--precision fp8`` cannot run on ``device`` (one line), or None when it can. ``capability``: the
    CUDA compute capability (read from the device when None; given by tests)."""
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return f"--precision fp8: this torch ({torch.__version__}) has no float8 matmul (torch._scaled_mm)"
    if device.type == "cuda":
        cc = tuple(capability) if capability is not None else torch.cuda.get_device_capability(device)
        if cc < CUDA_FP8_CAPABILITY:
            name = torch.cuda.get_device_name(device) if capability is None else "this GPU"
            return (f"--precision fp8: {device} ({name}, compute capability {cc[0]}.{cc[1]}) has no FP8 tensor "
                    f"cores; fp8 needs compute capability 8.9+ (Ada, Hopper, Blackwell): use --precision bf16")
        return None
    if device.type == "cpu":
        return None
    return (f"--precision fp8: not available on {device.type} devices; fp8 runs on CUDA GPUs of compute "
            f"capability 8.9+ (Ada, Hopper, Blackwell), or on the CPU for accuracy checks")


def check_fp8_device(device: torch.device, capability: tuple[int, int] | None = None) -> None:
    why = fp8_refusal(device, capability)
    if why:
        raise NtkError(why)


# ---------------------------------------------------------------------------------------------------
# quantisation

def quantise(x: torch.Tensor, scaling: str = "row") -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, s)``: ``x`` [M, K] as e4m3 values ``q`` and float32 scales ``s`` ([M, 1] per row, [] per tensor),
    with ``q * s ~= x``: each row's (or the tensor's) largest magnitude maps onto 448. A row of zeros gets the
    scale 1 (its values are exact)."""
    if scaling == "row":  # the largest magnitude is one of x's own values: exact in x's dtype
        amax = x.abs().amax(dim=-1, keepdim=True).float()
    elif scaling == "tensor":
        amax = x.abs().amax().float()
    else:
        raise ValueError(f"scaling {scaling!r}: expected one of {SCALINGS}")
    s = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    # x / s in float32 (x promoted to s's dtype inside the division: no float32 copy of x first) is at most 448 up
    # to one float32 rounding; clamp so that it never rounds past the largest e4m3
    q = (x / s).clamp_(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, s.contiguous()


def dequantise(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return q.float() * s


def emulated_linear(x8: torch.Tensor, sx: torch.Tensor, w8: torch.Tensor, sw: torch.Tensor,
                    bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """The reference of ``torch._scaled_mm``'s math: dequantise with the same scales, matmul and bias in float32,
    one rounding to ``out_dtype``. ``sw``: [1, N] or []."""
    y = dequantise(x8, sx) @ (w8.float() * (sw.reshape(-1, 1) if sw.dim() else sw)).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


class _Shared:
    """The last input quantised by one of a group of layers that read the same tensor (attention q/k/v): the
    next layers of the group reuse it instead of quantising it again. Held for ``uses`` calls at most."""

    def __init__(self, uses: int):
        self.uses = uses
        self.clear()

    def clear(self) -> None:
        self.x = self.q = self.s = None
        self.left = 0

    def get(self, x: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.left > 0 and self.x is x:
            q, s = self.q, self.s
            self.left -= 1
            if self.left == 0:
                self.clear()
            return q, s
        q, s = quantise(x, scaling)
        self.x, self.q, self.s, self.left = x, q, s, self.uses - 1
        return q, s


class Float8Linear(nn.Module):
    """Inference-only ``nn.Linear`` in float8 e4m3 (see the module docstring). Buffers, not parameters: the fp8
    weight ``weight_fp8`` [N, K], its scales ``weight_scale`` ([1, N] per row, [] per tensor) and the bias in
    ``out_dtype``. ``emulate``: compute with :func:`emulated_linear` instead of ``torch._scaled_mm`` (same
    quantisation; a reference, and a fallback where a torch build has no kernel)."""

    def __init__(self, linear: nn.Linear, scaling: str = "row", out_dtype: torch.dtype | None = None,
                 emulate: bool = False, shared: _Shared | None = None):
        super().__init__()
        if scaling not in SCALINGS:
            raise ValueError(f"scaling {scaling!r}: expected one of {SCALINGS}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.scaling, self.emulate, self._shared = scaling, emulate, shared
        self.out_dtype = out_dtype or linear.weight.dtype
        with torch.no_grad():
            w8, sw = quantise(linear.weight.detach(), scaling)
        self.register_buffer("weight_fp8", w8)
        self.register_buffer("weight_scale", sw.reshape(1, -1) if scaling == "row" else sw)
        b = linear.bias.detach().to(self.out_dtype) if linear.bias is not None else None
        self.register_buffer("bias", b)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, scaling={self.scaling}, "
                f"out_dtype={self.out_dtype}, emulate={self.emulate}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self._shared is not None:
            x8, sx = self._shared.get(x, self.scaling)
        else:
            x8, sx = quantise(x2, self.scaling)
        x8 = x8.reshape(-1, shape[-1])
        sx = sx.reshape(-1, 1) if self.scaling == "row" else sx
        if self.emulate:
            y = emulated_linear(x8, sx, self.weight_fp8, self.weight_scale, self.bias, self.out_dtype)
        else:
            y = torch._scaled_mm(x8, self.weight_fp8.t(), scale_a=sx, scale_b=self.weight_scale, bias=self.bias,
                                 out_dtype=self.out_dtype)
        return y.reshape(*shape[:-1], self.out_features)


# ---------------------------------------------------------------------------------------------------
# the module swap

def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList, tuple[str, ...]]:
    """(path, blocks, linear paths in a block) of an NT-family or NTv3 model's transformer trunk."""
    esm = getattr(model, "esm", None)
    if esm is not None and hasattr(esm, "encoder"):
        return "esm.encoder.layer", esm.encoder.layer, _NT_BLOCK_LINEARS
    core = getattr(model, "core", None)
    if core is not None and hasattr(core, "transformer_blocks"):
        return "core.transformer_blocks", core.transformer_blocks, _NTV3_BLOCK_LINEARS
    raise NtkError(f"--precision fp8: not available for {type(model).__name__} models (NT v1/v2, SegmentNT, AgroNT "
                   f"and NTv3 only)")


def trunk_linear_names(model: nn.Module) -> list[str]:
    """The full module names :func:`to_fp8` replaces (every block's attention and feed-forward linears)."""
    path, blocks, names = _blocks(model)
    return [f"{path}.{i}.{n}" for i in range(len(blocks)) for n in names]


def to_fp8(model: nn.Module, scaling: str = "row", emulate: bool = False, align: int | None = None) -> dict:
    """Replace the trunk's linear layers of ``model`` (in place) by :class:`Float8Linear`; returns a summary
    (``swapped``, ``kept`` names, ``scaling``, ``path``: ``"torch._scaled_mm"`` or ``"emulated"``). ``align``:
    layers whose inner or output size is not a multiple of it stay as they are (default: 16 on CUDA, where
    ``torch._scaled_mm`` needs it, else 1). The model must be in its compute dtype (bf16) already."""
    path, blocks, names = _blocks(model)
    if align is None:
        dev = next(model.parameters()).device
        align = CUDA_ALIGN if dev.type == "cuda" else 1
    swapped, kept = [], []
    for i, block in enumerate(blocks):
        shared = _Shared(3)  # q, k, v read the same normalised input (NT: the same tensor object)
        for n in names:
            parent_name, _, attr = n.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            lin = getattr(parent, attr)
            full = f"{path}.{i}.{n}"
            if isinstance(lin, Float8Linear):
                swapped.append(full)
                continue
            if type(lin) is not nn.Linear:
                raise NtkError(f"--precision fp8: {full} is a {type(lin).__name__}, not a plain linear layer "
                               f"(adapters are not supported in fp8: merge them first)")
            if lin.in_features % align or lin.out_features % align:
                kept.append(full)
                continue
            qkv = attr in ("query", "key", "value") or parent_name.endswith(("query_head", "key_head", "value_head"))
            setattr(parent, attr, Float8Linear(lin, scaling, emulate=emulate, shared=shared if qkv else None))
            swapped.append(full)
    model.fp8 = {"scaling": scaling, "path": "emulated" if emulate else "torch._scaled_mm",
                 "swapped": len(swapped), "kept": kept}
    return {**model.fp8, "swapped": swapped}


def is_fp8(model: nn.Module) -> bool:
    return any(isinstance(m, Float8Linear) for m in model.modules())
