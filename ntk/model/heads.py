"""Heads on top of the encoder: masked-LM head, SegmentNT 1-D U-Net head, sequence heads for fine-tuning."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import NTConfig
from .encoder import LayerNorm


class LMHead(nn.Module):
    """ESM/RoBERTa LM head: dense -> GELU -> LayerNorm -> decoder (no bias) + bias. Not tied to embeddings."""

    def __init__(self, cfg: NTConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x):
        return self.decoder(self.layer_norm(F.gelu(self.dense(x)))) + self.bias


class _ConvBlock(nn.Module):
    def __init__(self, channels: list[int], transpose: bool = False):
        super().__init__()
        conv = nn.ConvTranspose1d if transpose else nn.Conv1d
        self.conv_layers = nn.ModuleList(
            conv(channels[i], channels[i + 1], kernel_size=3, stride=1, padding=1) for i in range(len(channels) - 1)
        )


class UNet1D(nn.Module):
    """The SegmentNT U-Net (reference ``UNET1DSegmentationHead``), channels-first.

    down i: (conv k3 + SiLU) x n, keep as skip, average-pool by 2;
    up i:   (transposed conv k3 + SiLU) x n, nearest upsample x2, add the matching skip;
    final:  conv k3 + SiLU, ..., last conv without activation.
    """

    def __init__(self, embed_dim: int, num_layers: int = 2, convs_per_block: int = 2):
        super().__init__()
        chans = [embed_dim * 2**i for i in range(num_layers)]  # (H, 2H) for two levels
        down, c_in = [], embed_dim
        for c in chans:
            down.append(_ConvBlock([c_in] + [c] * convs_per_block))
            c_in = c
        up = []
        for c in reversed(chans):
            up.append(_ConvBlock([c_in] + [c] * convs_per_block, transpose=True))
            c_in = c
        self._downsample_blocks = nn.ModuleList(down)
        self._upsample_blocks = nn.ModuleList(up)
        self.final_block = _ConvBlock([c_in] + [embed_dim] * convs_per_block)
        self.num_layers = num_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, C, L]
        inplace = not torch.is_grad_enabled()  # inference: SiLU overwrites the conv output (no extra buffer)
        skips = []
        for blk in self._downsample_blocks:
            for conv in blk.conv_layers:
                x = F.silu(conv(x), inplace=inplace)
            skips.append(x)
            x = F.avg_pool1d(x, kernel_size=2, stride=2)
        for blk, skip in zip(self._upsample_blocks, reversed(skips)):
            for conv in blk.conv_layers:
                x = F.silu(conv(x), inplace=inplace)
            x = torch.repeat_interleave(x, 2, dim=-1) + skip
        convs = self.final_block.conv_layers
        for i, conv in enumerate(convs):
            x = conv(x)
            if i < len(convs) - 1:
                x = F.silu(x, inplace=inplace)
        return x


class SequenceHead(nn.Module):
    """Classification/regression head for fine-tuning: mean-pooled final embedding -> dense -> tanh -> out.

    Regression heads are trained on standardised targets; ``config.json`` then carries ``regression_mean`` and
    ``regression_std`` (one per target) and the head reports ``out * std + mean``, in the targets' own units.
    """

    def __init__(self, cfg: NTConfig, num_labels: int):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, num_labels)
        mean, std = cfg.extra.get("regression_mean"), cfg.extra.get("regression_std")
        self.register_buffer("target_mean", torch.tensor(mean, dtype=torch.float32) if mean else None,
                             persistent=False)
        self.register_buffer("target_std", torch.tensor(std, dtype=torch.float32) if std else None,
                             persistent=False)

    def forward(self, x, attention_mask):
        m = attention_mask.clone()
        m[:, 0] = False  # CLS excluded
        m = m.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        out = self.out_proj(torch.tanh(self.dense(pooled)))
        if self.target_std is not None:
            out = out * self.target_std.to(out.dtype) + self.target_mean.to(out.dtype)
        return out


NUCLEOTIDE_HEAD_KEY = "ntk_nucleotide_head"  # config.json key of the optional head below (ntk's own models only)
# receptive field +-(kernel-1)/2 * sum(dilations) = +-252 nt, like the dilated-CNN baseline of eval_segmentation.py
NUCLEOTIDE_HEAD_DEFAULTS = {"kernel": 9, "dilations": [1, 2, 4, 8, 16, 32]}


class _NucBlock(nn.Module):
    """Residual dilated block at nucleotide resolution: x + mix(SiLU(conv_d(SiLU(BN(x)))))."""

    def __init__(self, ch: int, kernel: int, dilation: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(ch)
        self.conv = nn.Conv1d(ch, ch, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
        self.mix = nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        return x + self.mix(F.silu(self.conv(F.silu(self.norm(x)))))


class NucleotideHead(nn.Module):
    """ntk's nucleotide-resolution refinement of the SegmentNT head (opt-in; official checkpoints have none).

    SegmentNT predicts the 6 nucleotides of a token from that token's U-Net feature through one linear layer,
    so nothing in it sees single bases: splice sites, whose signal is a few exact nucleotides, stay out of
    reach, and every token boundary is a place where the prediction can step. This head adds, per nucleotide,
    a residual dilated convolution stack over [the base itself (read back from the 6-mer token ids) + the
    token's U-Net feature projected per position within the token]; its output is added to SegmentNT's logits.
    The output layer starts at zero, so a freshly added head leaves the model's predictions unchanged.

    config.json: ``"ntk_nucleotide_head": {"channels": C, "kernel": k, "dilations": [...]}``.
    """

    def __init__(self, hidden: int, n_features: int, tokenizer, channels: int, kernel: int,
                 dilations: list[int]):
        super().__init__()
        if kernel % 2 == 0 or channels < 1 or not dilations:
            raise ValueError(f"{NUCLEOTIDE_HEAD_KEY}: kernel must be odd, channels >= 1, dilations non-empty")
        k, (lo, hi) = tokenizer.k, tokenizer.kmer_id_range
        table = torch.full((tokenizer.vocab_size, k), 4, dtype=torch.long)  # 4: not a base of a k-mer token
        v = torch.arange(hi - lo)
        for j in range(k):
            table[lo:hi, j] = (v // 4 ** (k - 1 - j)) % 4
        self.register_buffer("bases", table, persistent=False)
        self.k, self.channels, self.n_out = k, channels, n_features * 2
        self.base_embed = nn.Embedding(5, channels, padding_idx=4)
        self.context = nn.Linear(hidden, k * channels)
        self.blocks = nn.Sequential(*[_NucBlock(channels, kernel, d) for d in dilations])
        self.norm = nn.BatchNorm1d(channels)
        self.out = nn.Conv1d(channels, self.n_out, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, token_features: torch.Tensor, dna_ids: torch.Tensor) -> torch.Tensor:
        """U-Net features [B, L, H] and DNA token ids [B, L] (no CLS) -> logit corrections [B, k*L, n_out]."""
        B, L, _ = token_features.shape
        ctx = self.context(token_features).reshape(B, L * self.k, self.channels)
        x = ctx + self.base_embed(self.bases[dna_ids].reshape(B, L * self.k)).to(ctx.dtype)
        x = self.blocks(x.transpose(1, 2))
        return self.out(F.silu(self.norm(x))).transpose(1, 2)
