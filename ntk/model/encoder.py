"""Pre-LN ESM encoder used by every Nucleotide Transformer (v1, v2, SegmentNT, AgroNT).

Module names mirror the HF state-dict keys (``esm.encoder.layer.N.attention.self.query`` ...) so
checkpoints load without renaming. Attention runs through ``F.scaled_dot_product_attention``: no
attention matrix is materialised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import NTConfig


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32; returns the parameters' (compute) dtype.

    Under bf16/fp16 the residual stream stays float32 (see ``ESM.forward``) and only the matmuls run in low
    precision, which keeps outputs within ~1e-2 of float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(self.weight.dtype)


class Embeddings(nn.Module):
    def __init__(self, cfg: NTConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = (
            nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size, padding_idx=cfg.pad_token_id)
            if not cfg.rotary else None
        )
        self.token_dropout = cfg.token_dropout
        self.pad_id = cfg.pad_token_id
        self.mask_id = cfg.mask_token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``attention_mask`` None: nothing is padded (the caller knows it; no check, no multiply)."""
        x = self.word_embeddings(input_ids)
        if self.token_dropout:
            # ESM token dropout as applied at inference by the reference: zero <mask> rows, rescale by
            # (1 - 0.15*0.8) / (1 - observed mask ratio) per sequence.
            is_mask = input_ids == self.mask_id
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            real = attention_mask.sum(-1).float() if attention_mask is not None else float(input_ids.shape[1])
            observed = is_mask.sum(-1).float() / real
            x = (x * (1 - 0.15 * 0.8) / (1 - observed)[:, None, None]).to(x.dtype)
        if self.position_embeddings is not None:
            not_pad = (input_ids != self.pad_id).long()
            positions = torch.cumsum(not_pad, dim=1) * not_pad + self.pad_id
            x = x + self.position_embeddings(positions)
        if attention_mask is None or not_padded(attention_mask):  # skip a full pass over the activations
            return x
        return x * attention_mask.unsqueeze(-1).to(x.dtype)


def not_padded(attention_mask: torch.Tensor) -> bool:
    """Whether a key-padding mask masks nothing, checked in eager mode only: the check reads the mask back to the
    host (a device sync, and data-dependent control flow that ``torch.compile`` breaks its graph at). Under
    compilation the mask is kept as it is (same values: an all-True mask masks nothing); callers that know
    nothing is padded pass no mask at all."""
    if torch.compiler.is_compiling():
        return False
    return bool(attention_mask.all())


def rotary_inv_freq(head_dim: int, rescaling_factor: float | None, device=None) -> torch.Tensor:
    """Inverse frequencies; with a rescaling factor s the base becomes 10000 * s^(d/(d-2)) (reference rule)."""
    base = 10000.0
    if rescaling_factor is not None:
        base = base * rescaling_factor ** (head_dim / (head_dim - 2))
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


class Rotary:
    """Rotate-half rotary tables, cached per (length, factor, device, dtype).

    Rotate-half on ``x = [x1, x2]`` (the two halves of a head) is ``[x1 cos - x2 sin, x2 cos + x1 sin]``. The
    tables hold the half-width ``cos``, ``sin`` and the pre-negated ``-sin`` ([T, 1, head_dim/2], broadcasting over
    ``[B, T, heads, head_dim/2]``) plus the full-width ``cos`` and signed ``[-sin, sin]`` for the autograd path, so
    no call builds ``cat((-x2, x1))``."""

    def __init__(self, head_dim: int):
        self.head_dim = head_dim
        self._cache: dict = {}

    def tables(self, T: int, factor: float | None, device, dtype) -> RotaryTables:
        key = (T, factor, str(device), dtype)
        if key not in self._cache:
            if len(self._cache) > 16:
                self._cache.clear()
            inv = rotary_inv_freq(self.head_dim, factor, device=device)
            t = torch.arange(T, dtype=torch.float32, device=device)
            freqs = torch.outer(t, inv)[:, None, :]  # [T, 1, head_dim/2]
            cos, sin = freqs.cos(), freqs.sin()
            self._cache[key] = RotaryTables(cos.to(dtype), sin.to(dtype), (-sin).to(dtype),
                                            torch.cat((cos, cos), -1).to(dtype), torch.cat((-sin, sin), -1).to(dtype))
        return self._cache[key]


class RotaryTables(tuple):
    """(cos, sin, -sin) half-width and (cos, [-sin, sin]) full-width tables, [T, 1, d/2] and [T, 1, d]."""

    def __new__(cls, cos, sin, nsin, cos_full, sin_signed):
        return super().__new__(cls, (cos, sin, nsin, cos_full, sin_signed))


def apply_rotary(x: torch.Tensor, tables: RotaryTables) -> torch.Tensor:
    """Rotate-half rotary on ``x`` [B, T, heads, head_dim] (any strides): a new contiguous tensor.

    Without autograd the two halves are written straight into the output (a multiply and a fused multiply-add
    per half); with autograd or under ``torch.compile``, ``x cos + swap(x) [-sin, sin]`` (one flip, no
    negation)."""
    cos, sin, nsin, cos_full, sin_signed = tables
    h = x.shape[-1] // 2
    if (torch.is_grad_enabled() and x.requires_grad) or torch.compiler.is_compiling():
        # (under torch.compile: the functional form, which the compiler fuses into one kernel; ``out=`` writes
        # into strided halves are a graph break)
        swapped = x.unflatten(-1, (2, h)).flip(-2).flatten(-2)
        return x * cos_full + swapped * sin_signed
    out = torch.empty(x.shape, dtype=torch.result_type(x, cos), device=x.device)
    x1, x2, o1, o2 = x[..., :h], x[..., h:], out[..., :h], out[..., h:]
    torch.mul(x1, cos, out=o1).addcmul_(x2, nsin)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin)
    return out


class SelfAttention(nn.Module):
    def __init__(self, cfg: NTConfig):
        super().__init__()
        H = cfg.hidden_size
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.n_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.dropout = cfg.attention_probs_dropout_prob


class AttentionOutput(nn.Module):
    def __init__(self, cfg: NTConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)


class Attention(nn.Module):
    """Pre-LN multi-head self-attention with residual: ``x + Wo * MHA(LN(x))``."""

    def __init__(self, cfg: NTConfig):
        super().__init__()
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self = SelfAttention(cfg)
        self.output = AttentionOutput(cfg)

    def forward(self, x, key_mask, rope):
        B, T, H = x.shape
        sa = self.self
        nh, hd = sa.n_heads, sa.head_dim
        h = self.LayerNorm(x)
        if all(type(lin) is nn.Linear for lin in (sa.query, sa.key, sa.value)):
            # one [H -> 3H] matmul instead of three (the weights' concatenation costs 1/tokens of the matmul);
            # q and k then rotate in one pass
            w = torch.cat((sa.query.weight, sa.key.weight, sa.value.weight))
            b = torch.cat((sa.query.bias, sa.key.bias, sa.value.bias))
            qkv = F.linear(h, w, b).view(B, T, 3 * nh, hd)
            qk, v = qkv[:, :, :2 * nh], qkv[:, :, 2 * nh:]
        else:  # adapter layers (LoRA/IA3) keep their own forward
            qk = torch.cat((sa.query(h), sa.key(h)), -1).view(B, T, 2 * nh, hd)
            v = sa.value(h).view(B, T, nh, hd)
        if rope is not None:
            # the tables follow the residual stream's dtype; under autocast q/k/v are lower precision, and not
            # every autocast backend (XLA) casts SDPA's inputs to one dtype
            qk = apply_rotary(qk, rope).to(v.dtype)
        q, k, v = qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2), v.transpose(1, 2)
        drop = sa.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=drop)
        a = a.transpose(1, 2).reshape(B, T, H)
        return x + self.output.dense(a)


class Intermediate(nn.Module):
    def __init__(self, cfg: NTConfig):
        super().__init__()
        out = 2 * cfg.intermediate_size if cfg.glu else cfg.intermediate_size
        self.dense = nn.Linear(cfg.hidden_size, out, bias=not cfg.glu)
        self.glu = cfg.glu

    def forward(self, x):
        if self.glu:
            if not torch.is_grad_enabled() and type(self.dense) is nn.Linear:
                # inference: gate and up from two matmuls into contiguous buffers, SiLU and product in place
                # (no strided halves, no third [tokens, FFN] buffer)
                w = self.dense.weight
                n = w.shape[0] // 2
                return F.silu(F.linear(x, w[:n]), inplace=True).mul_(F.linear(x, w[n:]))
            gate, up = self.dense(x).chunk(2, dim=-1)
            return F.silu(gate) * up
        return F.gelu(self.dense(x))  # exact (erf) GELU


class Output(nn.Module):
    def __init__(self, cfg: NTConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=not cfg.glu)


class Block(nn.Module):
    def __init__(self, cfg: NTConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.intermediate = Intermediate(cfg)
        self.output = Output(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x, key_mask, rope):
        x = self.attention(x, key_mask, rope)
        return x + self.dropout(self.output.dense(self.intermediate(self.LayerNorm(x))))


class Encoder(nn.Module):
    def __init__(self, cfg: NTConfig):
        super().__init__()
        self.layer = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.emb_layer_norm_after = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.gradient_checkpointing = False


class ESM(nn.Module):
    """Embeddings + L pre-LN blocks + final LayerNorm. Returns the list of hidden states like HF."""

    def __init__(self, cfg: NTConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.rotary = Rotary(cfg.head_dim) if cfg.rotary else None

    def forward(self, input_ids, attention_mask, output_hidden_states=False, rescaling_factor=None,
                layers: int | None = None):
        """``layers``: stop after that many blocks (no final LN unless all blocks ran). ``attention_mask`` None:
        nothing is padded; SDPA then gets no mask (flash-eligible) and no data-dependent check runs."""
        B, T = input_ids.shape
        dtype = self.encoder.emb_layer_norm_after.weight.dtype  # compute dtype
        x = self.embeddings(input_ids, attention_mask).float()  # residual stream in float32
        # key-padding mask only; None when nothing is padded (lets SDPA pick its fastest kernel)
        unmasked = attention_mask is None or not_padded(attention_mask)
        key_mask = None if unmasked else attention_mask[:, None, None, :]
        rope = None
        if self.rotary is not None:
            factor = rescaling_factor if rescaling_factor is not None else self.config.rescaling_for_tokens(T)
            rope = self.rotary.tables(T, factor, x.device, dtype)
        hidden = [x.to(dtype)] if output_hidden_states else None
        n = len(self.encoder.layer) if layers is None else layers
        for i, block in enumerate(self.encoder.layer[:n]):
            if self.encoder.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, key_mask, rope, use_reentrant=False)
            else:
                x = block(x, key_mask, rope)
            if hidden is not None and i < len(self.encoder.layer) - 1:
                hidden.append(x.to(dtype))
        if n == len(self.encoder.layer):
            x = self.encoder.emb_layer_norm_after(x)
            if hidden is not None:
                hidden.append(x)
        return x.to(dtype), hidden
