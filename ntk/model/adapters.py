"""Parameter-efficient fine-tuning adapters for the encoder's linear layers: LoRA and IA3 (pure torch).

- **LoRA** (Hu et al. 2021): ``y = x Wᵀ + b + (alpha / r) · dropout(x) Aᵀ Bᵀ`` with ``A`` [r, in] (Kaiming-uniform)
  and ``B`` [out, r] (zeros, so training starts from the base model).
- **IA3** (Liu et al. 2022): learned vectors (initialised to ones) rescale the attention keys and values
  (outputs of ``key``/``value``) and the feed-forward intermediate activations (the input of the FFN output
  projection, i.e. after GELU or SwiGLU).

Adapted layers stay ``nn.Linear`` subclasses that keep the base ``weight``/``bias`` parameter names, so a
state dict of an adapted model is the HF layout plus ``<layer>.lora_A``, ``<layer>.lora_B`` or
``<layer>.ia3_scale`` keys, and its ``config.json`` describes the adapters under ``ntk_adapter`` (then
``ntk.load_model`` re-creates and merges them). :func:`merge_adapters` folds every adapter into plain weights (LoRA:
``W += (alpha/r) B A``; IA3 on outputs: ``W, b *= l`` row-wise; IA3 on inputs: ``W *= l`` column-wise) and
replaces the layers by ordinary ``nn.Linear`` modules: the result is a plain checkpoint any command loads.

Targets name encoder linear layers (in every block): ``query``, ``key``, ``value``, ``attn_out``
(attention output projection), ``ffn_in`` (FFN first projection), ``ffn_out`` (FFN output projection).
NTv3 models (Transformer blocks ``core.transformer_blocks.N``) map them onto ``sa_layer.query_head.linear``,
``key_head.linear``, ``value_head.linear``, ``sa_layer.mha_output``, ``fc1`` (the SwiGLU input projection, both
halves) and ``fc2`` (whose input is the SwiGLU activation); the U-Net convolutions and the species modulation
layers are not adapted.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

TARGETS = {
    "query": r"attention\.self\.query",
    "key": r"attention\.self\.key",
    "value": r"attention\.self\.value",
    "attn_out": r"attention\.output\.dense",
    "ffn_in": r"intermediate\.dense",
    "ffn_out": r"(?<!attention\.)output\.dense",
}
LORA_DEFAULT_TARGETS = ("query", "value")
IA3_DEFAULT_TARGETS = ("key", "value", "ffn_out")
NTV3_TARGETS = {  # NTv3 Transformer blocks (model/ntv3.py)
    "query": r"sa_layer\.query_head\.linear",
    "key": r"sa_layer\.key_head\.linear",
    "value": r"sa_layer\.value_head\.linear",
    "attn_out": r"sa_layer\.mha_output",
    "ffn_in": r"fc1",
    "ffn_out": r"fc2",
}
_NTV3_BLOCK = r"core\.transformer_blocks\.\d+\."
# IA3 rescales the *input* of these layers (the FFN activations), the *output* of the others
IA3_INPUT_SIDE = {"ffn_out"}
ADAPTER_KEY = "ntk_adapter"  # config.json entry describing the adapters of an unmerged checkpoint


class LoRALinear(nn.Linear):
    """``nn.Linear`` with a trainable low-rank update ``(alpha/r) B A``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=dev, dtype=dt))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.rank, self.alpha = rank, float(alpha)
        self.scaling = self.alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return y + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    def merged_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.weight + (self.lora_B.float() @ self.lora_A.float()).to(self.weight.dtype) * self.scaling
        return w, self.bias


class IA3Linear(nn.Linear):
    """``nn.Linear`` whose output (``side='output'``) or input (``side='input'``) is rescaled by a learned vector."""

    def __init__(self, base: nn.Linear, side: str):
        nn.Module.__init__(self)
        if side not in ("input", "output"):
            raise ValueError(f"IA3 side must be 'input' or 'output' (got {side!r})")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        n = self.in_features if side == "input" else self.out_features
        self.ia3_scale = nn.Parameter(torch.ones(n, device=base.weight.device, dtype=base.weight.dtype))
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.side == "input":
            return F.linear(x * self.ia3_scale, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias) * self.ia3_scale

    def merged_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.side == "input":
            return self.weight * self.ia3_scale[None, :], self.bias
        b = self.bias * self.ia3_scale if self.bias is not None else None
        return self.weight * self.ia3_scale[:, None], b


def parse_targets(targets: str | Iterable[str] | None, default: Iterable[str]) -> list[str]:
    if targets is None or targets == "":
        return list(default)
    items = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    unknown = [t for t in items if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown adapter target {unknown[0]!r} (choose from {', '.join(TARGETS)})")
    return list(dict.fromkeys(items))


def _encoder_linears(model: nn.Module, target: str) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every encoder-block linear layer matching a target alias."""
    ntv3 = any(re.match(_NTV3_BLOCK, name) for name, _ in model.named_modules())
    block, table = (_NTV3_BLOCK, NTV3_TARGETS) if ntv3 else (r"encoder\.layer\.\d+\.", TARGETS)
    pattern = re.compile(block + table[target] + r"$")
    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and pattern.search(name):
            parent_name, _, attr = name.rpartition(".")
            found.append((model.get_submodule(parent_name), attr, mod))
    if not found:
        raise ValueError(f"adapter target {target!r} matches no layer of this model")
    taken = [name for name, mod in model.named_modules() if pattern.search(name) and _is_adapted(mod)]
    if taken:
        raise ValueError(f"layer {taken[0]} already carries an adapter")
    return found


def _is_adapted(mod: nn.Module) -> bool:
    return isinstance(mod, (LoRALinear, IA3Linear))


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, targets=None, dropout: float = 0.0) -> dict:
    """Wrap the targeted encoder linears with LoRA; return the adapter config (``config.json`` ``ntk_adapter``)."""
    if rank < 1:
        raise ValueError("LoRA rank must be >= 1")
    names = parse_targets(targets, LORA_DEFAULT_TARGETS)
    for t in names:
        for parent, attr, lin in _encoder_linears(model, t):
            setattr(parent, attr, LoRALinear(lin, rank, alpha, dropout))
    return {"method": "lora", "rank": rank, "alpha": float(alpha), "dropout": float(dropout), "targets": names}


def apply_ia3(model: nn.Module, targets=None) -> dict:
    """Wrap the targeted encoder linears with IA3 rescaling vectors; return the adapter config."""
    names = parse_targets(targets, IA3_DEFAULT_TARGETS)
    for t in names:
        side = "input" if t in IA3_INPUT_SIDE else "output"
        for parent, attr, lin in _encoder_linears(model, t):
            setattr(parent, attr, IA3Linear(lin, side))
    return {"method": "ia3", "targets": names}


def apply_adapters(model: nn.Module, config: dict) -> dict:
    """Re-create the adapters described by an adapter config (as returned by apply_lora/apply_ia3)."""
    method = config.get("method")
    if method == "lora":
        return apply_lora(model, int(config["rank"]), float(config["alpha"]), config.get("targets"),
                          float(config.get("dropout", 0.0)))
    if method == "ia3":
        return apply_ia3(model, config.get("targets"))
    raise ValueError(f"unknown adapter method {method!r} (lora or ia3)")


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    params = []
    for mod in model.modules():
        if isinstance(mod, LoRALinear):
            params += [mod.lora_A, mod.lora_B]
        elif isinstance(mod, IA3Linear):
            params.append(mod.ia3_scale)
    return params


def has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, (LoRALinear, IA3Linear)) for m in model.modules())


@torch.no_grad()
def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weights and put plain ``nn.Linear`` layers back (in place)."""
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, (LoRALinear, IA3Linear)):
            continue
        w, b = mod.merged_weight()
        plain = nn.Linear(mod.in_features, mod.out_features, bias=b is not None,
                          device=w.device, dtype=w.dtype)
        plain.weight.copy_(w)
        if b is not None:
            plain.bias.copy_(b)
        plain.weight.requires_grad_(mod.weight.requires_grad)
        if b is not None:
            plain.bias.requires_grad_(mod.bias.requires_grad)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, plain)
    return model
