"""ChatNT's English-aware Perceiver resampler: one DNA sequence's encoder output -> R embeddings for the decoder.

Reference: ``nucleotide_transformer.chatNT.multi_modal_perceiver_projection`` (Haiku). Per call:
``xb = bio_to_english_projection(nt_embeddings)``, ``xe = token_embed(english_ids)`` (a table of its own,
out-of-vocabulary ids such as ``<DNA>`` clamped to the last row), latents ``x = latent_queries`` [R, D].
Each layer takes ``kv1 = [xb; x]`` and ``kv2 = [xe; x]`` from ``x`` at the *start* of the layer (not
normalised) and does::

    x += MHA1(LN1(x), kv1)      keys valid: bio tokens != bio pad, and the R latents
    x += MHA2(LN2(x), kv2)      keys valid: English tokens != English pad (every ``</s>``), and the R latents
    x += fc2(gelu_erf(fc1(LN3(x))))

LayerNorm eps 1e-5; q/k/v/output projections with bias; no rotary; logits / sqrt(key_size). No final norm.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PerceiverConfig:
    embed_dim: int = 4096
    num_heads: int = 32
    key_size: int = 128
    ffn_embed_dim: int = 11008
    num_layers: int = 3
    resampled_length: int = 64
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_reference(cls, p: dict) -> PerceiverConfig:
        """From the reference ``PerceiverResamplerConfig`` fields (``perceiver_resampler_config``)."""
        bad = []
        if p.get("use_glu_in_ffn", False):
            bad.append("use_glu_in_ffn")
        if not p.get("add_bias_ffn", True):
            bad.append("add_bias_ffn=false")
        if p.get("add_bias_kv", False):
            bad.append("add_bias_kv")
        if p.get("emb_layer_norm_before", False):
            bad.append("emb_layer_norm_before")
        if p.get("ffn_activation_name", "gelu-no-approx") != "gelu-no-approx":
            bad.append(f"ffn_activation_name={p['ffn_activation_name']!r}")
        if bad:
            raise ValueError("perceiver_resampler_config: unsupported " + ", ".join(bad))
        embed = int(p["embed_dim"])
        heads = int(p["attention_heads"])
        return cls(embed_dim=embed, num_heads=heads, key_size=int(p.get("key_size") or embed // heads),
                   ffn_embed_dim=int(p["ffn_embed_dim"]), num_layers=int(p["num_layers"]),
                   resampled_length=int(p["resampled_length"]))


class CrossAttention(nn.Module):
    def __init__(self, cfg: PerceiverConfig):
        super().__init__()
        inner = cfg.num_heads * cfg.key_size
        self.heads, self.key_size = cfg.num_heads, cfg.key_size
        self.query = nn.Linear(cfg.embed_dim, inner)
        self.key = nn.Linear(cfg.embed_dim, inner)
        self.value = nn.Linear(cfg.embed_dim, inner)
        self.output = nn.Linear(inner, cfg.embed_dim)

    def forward(self, q_in: torch.Tensor, kv_in: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        B, R, _ = q_in.shape
        S = kv_in.shape[1]
        q = self.query(q_in).view(B, R, self.heads, self.key_size).transpose(1, 2)
        k = self.key(kv_in).view(B, S, self.heads, self.key_size).transpose(1, 2)
        v = self.value(kv_in).view(B, S, self.heads, self.key_size).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid[:, None, None, :])
        return self.output(a.transpose(1, 2).reshape(B, R, self.heads * self.key_size))


class PerceiverLayer(nn.Module):
    def __init__(self, cfg: PerceiverConfig):
        super().__init__()
        eps = cfg.layer_norm_eps
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=eps)
        self.attn1 = CrossAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=eps)
        self.attn2 = CrossAttention(cfg)
        self.norm3 = nn.LayerNorm(cfg.embed_dim, eps=eps)
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.ffn_embed_dim, cfg.embed_dim)

    def forward(self, x, xb, bio_valid, xe, eng_valid):
        kv1 = torch.cat((xb, x), dim=1)
        kv2 = torch.cat((xe, x), dim=1)
        x = x + self.attn1(self.norm1(x), kv1, bio_valid)
        x = x + self.attn2(self.norm2(x), kv2, eng_valid)
        return x + self.fc2(F.gelu(self.fc1(self.norm3(x))))


class PerceiverResampler(nn.Module):
    """``(nt_embeddings [B, Lb, Dn], bio_ids [B, Lb], english_ids [B, L]) -> [B, R, D]``."""

    def __init__(self, cfg: PerceiverConfig, bio_dim: int, english_vocab_size: int, bio_pad_id: int,
                 english_pad_id: int):
        super().__init__()
        self.config = cfg
        self.bio_to_english_projection = nn.Linear(bio_dim, cfg.embed_dim)
        self.token_embed = nn.Embedding(english_vocab_size, cfg.embed_dim)
        self.latent_queries = nn.Parameter(torch.zeros(cfg.resampled_length, cfg.embed_dim))
        self.layers = nn.ModuleList(PerceiverLayer(cfg) for _ in range(cfg.num_layers))
        self.bio_pad_id, self.english_pad_id = bio_pad_id, english_pad_id

    def forward(self, nt_embeddings: torch.Tensor, bio_ids: torch.Tensor, english_ids: torch.Tensor) -> torch.Tensor:
        dtype = self.latent_queries.dtype
        B = bio_ids.shape[0]
        R = self.config.resampled_length
        xb = self.bio_to_english_projection(nt_embeddings.to(dtype))
        xe = self.token_embed(english_ids.clamp(0, self.token_embed.num_embeddings - 1))
        x = self.latent_queries.unsqueeze(0).expand(B, -1, -1)
        ones = torch.ones(B, R, dtype=torch.bool, device=bio_ids.device)
        bio_valid = torch.cat((bio_ids != self.bio_pad_id, ones), dim=1)
        eng_valid = torch.cat((english_ids != self.english_pad_id, ones), dim=1)
        for layer in self.layers:
            x = layer(x, xb, bio_valid, xe, eng_valid)
        return x
