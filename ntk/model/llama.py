"""LLaMA-layout decoder (the language half of ChatNT: Vicuna-7B in the release), written plainly in torch.

What the reference (``nucleotide_transformer.chatNT.gpt_decoder``, Haiku) does, and this file reproduces:
- pre-norm blocks: ``x + attn(RMSNorm(x))`` then ``x + ffn(RMSNorm(x))``; RMSNorm is
  ``x * rsqrt(mean(x^2) + eps) * scale`` with ``rms_norm_eps`` (1e-6) in the blocks but Haiku's default
  **1e-5** for the final norm;
- attention without biases, grouped-query heads (kv head ``h // (H / H_kv)``), logits / sqrt(head_dim),
  causal mask only (no padding mask);
- **interleaved (GPT-J) rotary** on the first ``rope_dim`` channels of each head: channel pairs
  ``(2i, 2i+1)`` are rotated by ``pos * theta^(-2i/rope_dim)``; the sin/cos tables are computed in float64
  and rounded once, as the reference's numpy tables are;
- SwiGLU FFN ``fc2(silu(gate) * up)`` with ``[gate | up] = fc1(x)``, no biases; untied LM head.

Beyond the reference (it recomputes the whole sequence for every new token): a key/value cache.
:meth:`LlamaDecoder.prefill` runs a causal pass and returns a :class:`KVCache`; :meth:`LlamaDecoder.step`
adds one token per row at a per-row position (rows of a batch may sit at different lengths) and attends
only to cache slots ``<= position`` of its row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    embed_dim: int = 4096
    ffn_embed_dim: int = 11008
    num_heads: int = 32
    num_kv_heads: int | None = None
    num_layers: int = 32
    rope_dim: int | None = None  # None: the whole head
    rope_theta: float = 10000.0
    rope_max_seq_len: int = 2048
    rms_norm_eps: float = 1e-6
    final_norm_eps: float = 1e-5  # Haiku RMSNorm default, used by the reference's final_RMS_norm
    eos_token_id: int = 2

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @classmethod
    def from_reference(cls, g: dict) -> LlamaConfig:
        """Build from the reference ``GptConfig`` fields (``gpt_config`` in a ChatNT ``config.json``)."""
        unsupported = []
        if g.get("norm_type", "RMS_norm") != "RMS_norm":
            unsupported.append(f"norm_type={g['norm_type']!r}")
        if g.get("parallel_attention_ff", False):
            unsupported.append("parallel_attention_ff")
        if g.get("add_bias_attn", False) or g.get("add_bias_ffn", False) or g.get("add_bias_lm_head", False):
            unsupported.append("biases in attention/FFN/LM head")
        if not g.get("use_glu_in_ffn", True) or g.get("ffn_activation_name", "silu") not in ("silu", "swish"):
            unsupported.append("an FFN other than SwiGLU")
        if unsupported:
            raise ValueError("gpt_config: not a LLaMA-layout decoder (" + ", ".join(unsupported) + ")")
        rope = g.get("rope_config") or {}
        return cls(vocab_size=int(g["vocab_size"]), embed_dim=int(g["embed_dim"]),
                   ffn_embed_dim=int(g["ffn_embed_dim"]), num_heads=int(g["num_heads"]),
                   num_kv_heads=g.get("num_kv_heads"), num_layers=int(g["num_layers"]),
                   rope_dim=rope.get("dim"), rope_theta=float(rope.get("theta", 10000.0)),
                   rope_max_seq_len=int(rope.get("max_seq_len", 2048)),
                   rms_norm_eps=float(g.get("rms_norm_eps", 1e-6)), eos_token_id=int(g.get("eos_token_id", 2)))


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * scale``, computed in float32, returned in the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class InterleavedRotary:
    """sin/cos tables for GPT-J style rotary embeddings, indexed by (per-row) positions."""

    def __init__(self, dim: int, theta: float, max_len: int):
        self.dim, self.theta, self.max_len = dim, theta, max_len
        self._cache: dict = {}

    def _table(self, n: int, device, dtype):
        key = (n, str(device), dtype)
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            inv = 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.float64) / self.dim))
            ang = torch.outer(torch.arange(n, dtype=torch.float64), inv)
            self._cache[key] = (ang.cos().to(device=device, dtype=dtype), ang.sin().to(device=device, dtype=dtype))
        return self._cache[key]

    def tables(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions`` [B, T] -> cos, sin [B, 1, T, dim/2]."""
        need = int(positions.max()) + 1 if positions.numel() else 1
        cos, sin = self._table(max(self.max_len, need), positions.device, dtype)
        return cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, H, T, hd]: rotate channel pairs (2i, 2i+1) of the first ``dim`` channels."""
        d = self.dim
        xr, rest = x[..., :d], x[..., d:]
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        return torch.cat((out.to(x.dtype), rest), dim=-1) if rest.shape[-1] else out.to(x.dtype)


@dataclass
class KVCache:
    """Per-layer keys/values ``[B, H_kv, S, hd]``; slot ``s`` holds sequence position ``s``."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def size(self) -> int:
        return self.keys[0].shape[2]


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        hd = cfg.head_dim
        self.n_heads, self.n_kv, self.hd = cfg.num_heads, cfg.kv_heads, hd
        self.q = nn.Linear(cfg.embed_dim, cfg.num_heads * hd, bias=False)
        self.k = nn.Linear(cfg.embed_dim, self.n_kv * hd, bias=False)
        self.v = nn.Linear(cfg.embed_dim, self.n_kv * hd, bias=False)
        self.o = nn.Linear(cfg.num_heads * hd, cfg.embed_dim, bias=False)

    def _qkv(self, x, cos, sin, rope: InterleavedRotary):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        return rope.apply(q, cos, sin), rope.apply(k, cos, sin), v

    def _attend(self, q, k, v, mask=None, causal=False):
        rep = self.n_heads // self.n_kv
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        B, _, T, _ = a.shape
        return self.o(a.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))

    def forward(self, x, cos, sin, rope, cache_slot: tuple[KVCache, int] | None = None):
        """Causal self-attention over the whole of ``x``; fills ``cache.keys/values[layer][:, :, :T]`` if given."""
        q, k, v = self._qkv(x, cos, sin, rope)
        if cache_slot is not None:
            cache, i = cache_slot
            T = x.shape[1]
            cache.keys[i][:, :, :T] = k
            cache.values[i][:, :, :T] = v
        return self._attend(q, k, v, causal=True)

    def step(self, x, cos, sin, rope, cache: KVCache, i: int, positions: torch.Tensor, key_mask: torch.Tensor):
        """One new token per row (``x`` [B, 1, D]) written at ``positions`` [B]; ``key_mask`` [B, 1, 1, S]."""
        q, k, v = self._qkv(x, cos, sin, rope)
        rows = torch.arange(x.shape[0], device=x.device)
        cache.keys[i][rows, :, positions] = k[:, :, 0]
        cache.values[i][rows, :, positions] = v[:, :, 0]
        return self._attend(q, cache.keys[i], cache.values[i], mask=key_mask)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.embed_dim, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.embed_dim, cfg.rms_norm_eps)
        self.fc1 = nn.Linear(cfg.embed_dim, 2 * cfg.ffn_embed_dim, bias=False)  # [gate | up]
        self.fc2 = nn.Linear(cfg.ffn_embed_dim, cfg.embed_dim, bias=False)

    def mlp(self, x):
        gate, up = self.fc1(self.ffn_norm(x)).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * up)

    def forward(self, x, cos, sin, rope, cache_slot=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, rope, cache_slot)
        return x + self.mlp(x)

    def step(self, x, cos, sin, rope, cache, i, positions, key_mask):
        x = x + self.attn.step(self.attn_norm(x), cos, sin, rope, cache, i, positions, key_mask)
        return x + self.mlp(x)


class LlamaDecoder(nn.Module):
    """Token embedding + blocks + final RMSNorm + LM head. Inputs are embeddings (ChatNT inserts DNA rows)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.final_norm = RMSNorm(cfg.embed_dim, cfg.final_norm_eps)
        self.lm_head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        self.rope = InterleavedRotary(cfg.rope_dim or cfg.head_dim, cfg.rope_theta, cfg.rope_max_seq_len)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings; ids >= vocab size read the last row (the reference's clamped JAX gather)."""
        return self.token_embed(ids.clamp(0, self.config.vocab_size - 1))

    def forward(self, h: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Causal pass over embeddings ``h`` [B, T, D] at positions 0..T-1 -> hidden after the final norm."""
        B, T, _ = h.shape
        pos = torch.arange(T, device=h.device).expand(B, T)
        cos, sin = self.rope.tables(pos, h.dtype)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, self.rope, None if cache is None else (cache, i))
        return self.final_norm(h)

    def new_cache(self, batch: int, size: int, device, dtype) -> KVCache:
        cfg = self.config
        shape = (batch, cfg.kv_heads, size, cfg.head_dim)
        return KVCache([torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers],
                       [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers])

    def prefill(self, h: torch.Tensor, cache_size: int) -> tuple[torch.Tensor, KVCache]:
        """Causal pass over ``h`` that also stores every position's keys/values in a cache of ``cache_size`` slots."""
        if cache_size < h.shape[1]:
            raise ValueError(f"cache of {cache_size} slots cannot hold a prefill of {h.shape[1]} positions")
        cache = self.new_cache(h.shape[0], cache_size, h.device, h.dtype)
        return self.forward(h, cache), cache

    def step(self, h: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Embeddings ``h`` [B, 1, D] of one new token per row at ``positions`` [B] -> hidden [B, 1, D].

        Each row attends to its cache slots ``0..position`` (its own earlier tokens and itself)."""
        cos, sin = self.rope.tables(positions[:, None], h.dtype)
        slots = torch.arange(cache.size, device=h.device)
        key_mask = (slots[None, :] <= positions[:, None])[:, None, None, :]
        for i, layer in enumerate(self.layers):
            h = layer.step(h, cos, sin, self.rope, cache, i, positions, key_mask)
        return self.final_norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
