"""Nucleotide Transformer v3 (pre-trained MLM and species-conditioned post-trained models), pure torch.

Loads the HF layout of the released checkpoints (``config.json`` + ``core.*`` tensors; rotary ``inv_freq``
buffers are ignored) and reproduces the PyTorch code that ships with them (see
../shared/golden/README_ntv3_chatnt.md). Layout conventions: everything is channels-last ``[B, L, C]``.

``m(input_ids, species_ids=None, output_hidden_states=False)`` -> :class:`NTv3Output`:

- ``logits [B, L, 11]`` (MLM head), ``embedding [B, L, C0]`` (final up-sampling output, per base; also
  ``last_hidden_state``), ``after_transformer_embedding [B, L/2^n, D]``;
- ``hidden_states``: ``[0]`` = Transformer input (``before_transformer_embedding``), ``[i]`` = output of
  Transformer block i (``embeddings_i``; no final norm, so the last equals ``after_transformer_embedding``);
  ``deconv_hidden_states[i-1]`` = ``embeddings_deconv_i``; ``out["embeddings_2"]`` works like the golden keys;
- post-trained: ``species_logits [B, V_species]``, ``bigwig_tracks_logits [B, L_crop, max_tracks]``
  (softplus, zero for tracks the species lacks), ``bed_tracks_logits [B, L_crop, E, 2]`` and
  ``bed_probabilities = softmax(...)[..., 1]``, with ``L_crop = int(L * keep_target_center_fraction)``
  starting at ``(L - L_crop) // 2``.

``reference="jax"`` switches the four documented places to the JAX port (all-``<pad>`` block key masking,
gelu before the species head, head LayerNorm eps 1e-6, JAX centre crop); the default ``"hf"`` matches the
released checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ntv3_config import NTv3Config
from .tokenizer import TokenBatch, sequence_codes

VOCAB = ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>", "A", "T", "C", "G", "N"]
PAD_ID, MASK_ID, N_ID = 1, 2, 10
_CODE_TO_ID = np.array([6, 7, 8, 9, 10], dtype=np.int64)  # A T C G N codes -> ids


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# ---------------------------------------------------------------------------------------------------
# tokenizer

class NTv3Tokenizer:
    """Single-base tokenizer: A T C G N -> 6..10; no CLS/EOS. Batches are padded with ``N`` (id 10) up to a
    multiple of the model's window unit, never with ``<pad>`` unless ``pad_token="<pad>"`` is asked for."""

    vocab = VOCAB
    vocab_size = len(VOCAB)
    pad_id, mask_id, n_id = PAD_ID, MASK_ID, N_ID
    cls_id = None

    def __init__(self, unit: int = 1):
        self.unit = unit

    def id_to_token(self, i: int) -> str:
        return VOCAB[int(i)]

    def token_to_id(self, tok: str) -> int:
        return VOCAB.index(tok)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [VOCAB[int(i)] for i in ids]

    def tokenize_codes(self, codes: np.ndarray, add_cls: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Code array (A0 T1 C2 G3 N4) -> ``(ids, starts, ends)``, one token per base."""
        if add_cls:
            raise ValueError("NTv3 takes no <cls> token")
        ids = _CODE_TO_ID[codes]
        starts = np.arange(codes.shape[0], dtype=np.int64)
        return ids, starts, starts + 1

    def tokenize(self, seq: str | bytes, add_cls: bool = False):
        return self.tokenize_codes(sequence_codes(seq), add_cls=add_cls)

    def encode(self, seqs, pad_to: int | None = None, pad_token: str = "N", max_length: int | None = None) -> TokenBatch:
        """Tokenize a batch, right-padded with ``N`` to a common length that is a multiple of ``unit``;
        ``attention_mask`` marks the real bases (what pooling uses)."""
        if isinstance(seqs, (str, bytes)):
            seqs = [seqs]
        toks = [self.tokenize(s) for s in seqs]
        T = max((len(t[0]) for t in toks), default=0)
        if pad_to is not None:
            T = max(T, pad_to)
        T = max(self.unit, -(-T // self.unit) * self.unit)
        if max_length is not None and T > max_length:
            raise ValueError(f"sequence needs {T} tokens but at most {max_length} are allowed")
        pad = self.token_to_id(pad_token)
        ids = np.full((len(toks), T), pad, dtype=np.int64)
        mask = np.zeros((len(toks), T), dtype=bool)
        offsets = np.full((len(toks), T, 2), -1, dtype=np.int64)
        for i, (t, s, e) in enumerate(toks):
            ids[i, :len(t)] = t
            mask[i, :len(t)] = True
            offsets[i, :len(t), 0] = s
            offsets[i, :len(t), 1] = e
        return TokenBatch(torch.from_numpy(ids), torch.from_numpy(mask), offsets)

    __call__ = encode

    def __repr__(self) -> str:
        return f"NTv3Tokenizer(unit={self.unit})"


# ---------------------------------------------------------------------------------------------------
# building blocks (module names follow the HF checkpoint: core.*)

class CondLayerNorm(nn.Module):
    """LayerNorm over the last axis; with conditions: ``LN(x) * prod(1 + scale_j) + sum(shift_j)``,
    ``[shift | scale] = modulation_layers[j](c_j)``."""

    def __init__(self, dim: int, n_cond: int, cond_dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.modulation_layers = nn.ModuleList(nn.Linear(cond_dim, 2 * dim) for _ in range(n_cond))

    def forward(self, x: torch.Tensor, conds: list[torch.Tensor] | None) -> torch.Tensor:
        y = F.layer_norm(x.float(), x.shape[-1:], self.weight.float(), self.bias.float(), self.eps).to(x.dtype)
        if self.modulation_layers and conds:
            for lin, c in zip(self.modulation_layers, conds):
                shift, scale = lin(c).unsqueeze(1).chunk(2, dim=-1)
                y = y * (1 + scale) + shift
        return y


def _gate(layers: nn.ModuleList, conds, branch: torch.Tensor) -> torch.Tensor:
    for lin, c in zip(layers, conds or []):
        branch = branch * (1 + lin(c).unsqueeze(1))
    return branch


class ConvBlock(nn.Module):
    """``gelu(conv(LN(x)))``, LN over the input width; ``kind`` = conv | conv_transpose | repeat+conv."""

    def __init__(self, din: int, dout: int, k: int, kind: str, n_cond: int, cond_dim: int, eps: float):
        super().__init__()
        self.kind = kind
        self.layer_norm = CondLayerNorm(din, n_cond, cond_dim, eps)
        if kind == "conv_transpose":
            self.conv = nn.ConvTranspose1d(din, dout, k, stride=2)  # weight [in, out, k]
        elif kind == "transpose1":  # the up tower's k=1 residual conv is a ConvTranspose1d: weight [in, out, 1]
            self.conv = nn.ConvTranspose1d(din, dout, 1)
        else:
            self.conv = nn.Conv1d(din, dout, k, padding=k // 2)

    def forward(self, x: torch.Tensor, conds) -> torch.Tensor:
        h = self.layer_norm(x, conds).transpose(1, 2)
        if self.kind == "conv_transpose":
            # JAX SAME stride-2 transpose conv, phase "odd": zero-insert at odd positions then cross-correlate
            # = conv_transpose1d with the flipped kernel, cropped asymmetrically to 2L
            L = h.shape[-1]
            k = self.conv.weight.shape[-1]
            h = F.conv_transpose1d(h, self.conv.weight.flip(-1), self.conv.bias, stride=2, padding=k // 2 - 1)
            h = h[..., :2 * L]
        elif self.kind == "transpose1":
            h = F.conv1d(h, self.conv.weight.transpose(0, 1), self.conv.bias)
        elif self.kind == "repeat+conv":
            h = self.conv(torch.repeat_interleave(h, 2, dim=-1))
        else:
            h = self.conv(h)
        return gelu(h.transpose(1, 2))


class ResidualConvBlock(nn.Module):
    def __init__(self, dim: int, n_cond: int, cond_dim: int, eps: float, up: bool = False):
        super().__init__()
        self.conv_block = ConvBlock(dim, dim, 1, "transpose1" if up else "conv", n_cond, cond_dim, eps)
        self.modulation_layers = nn.ModuleList(nn.Linear(cond_dim, dim) for _ in range(n_cond))

    def forward(self, x, conds):
        return x + _gate(self.modulation_layers, conds, self.conv_block(x, conds))


class TowerBlock(nn.Module):
    def __init__(self, din, dout, kind, n_cond, cond_dim, eps):
        super().__init__()
        self.conv = ConvBlock(din, dout, 5, kind, n_cond, cond_dim, eps)
        self.res_conv = ResidualConvBlock(dout, n_cond, cond_dim, eps, up=kind != "conv")

    def forward(self, x, conds):
        return self.res_conv(self.conv(x, conds), conds)


class Stem(nn.Module):
    def __init__(self, din, dout):
        super().__init__()
        self.conv = nn.Conv1d(din, dout, 15, padding=7)

    def forward(self, x):
        return gelu(self.conv(x.transpose(1, 2)).transpose(1, 2))


class _Linear(nn.Module):
    def __init__(self, din, dout):
        super().__init__()
        self.linear = nn.Linear(din, dout)

    def forward(self, x):
        return self.linear(x)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, key_size: int):
        super().__init__()
        self.heads, self.key_size = heads, key_size
        self.query_head = _Linear(dim, heads * key_size)
        self.key_head = _Linear(dim, heads * key_size)
        self.value_head = _Linear(dim, heads * key_size)
        self.mha_output = nn.Linear(heads * key_size, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        H, d = self.heads, self.key_size
        q, k, v = (m(x).view(B, T, H, d).transpose(1, 2) for m in (self.query_head, self.key_head, self.value_head))
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
        freqs = torch.outer(torch.arange(T, device=x.device, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        mask = None
        if key_mask is not None:
            mask = torch.zeros(B, 1, 1, T, dtype=q.dtype, device=x.device).masked_fill(~key_mask[:, None, None, :], -1e30)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.mha_output(o.transpose(1, 2).reshape(B, T, H * d))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: NTv3Config, n_cond: int):
        super().__init__()
        D, c = cfg.embed_dim, cfg.token_embed_dim
        self.self_attention_layer_norm = CondLayerNorm(D, n_cond, c, cfg.layer_norm_eps)
        self.final_layer_norm = CondLayerNorm(D, n_cond, c, cfg.layer_norm_eps)
        self.sa_layer = SelfAttention(D, cfg.attention_heads, cfg.key_size)
        self.fc1 = nn.Linear(D, 2 * cfg.ffn_embed_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_embed_dim, D, bias=False)
        self.modulation_layers = nn.ModuleList(nn.Linear(c, D) for _ in range(n_cond))

    def forward(self, x, conds, key_mask):
        x = x + self.sa_layer(self.self_attention_layer_norm(x, conds), key_mask)
        a, b = self.fc1(self.final_layer_norm(x, conds)).chunk(2, dim=-1)
        return x + _gate(self.modulation_layers, conds, self.fc2(F.silu(a) * b))


class _Head(nn.Module):
    def __init__(self, din, dout):
        super().__init__()
        self.layer_norm = nn.LayerNorm(din, eps=1e-5)
        self.head = nn.Linear(din, dout)

    def forward(self, x, eps):
        return self.head(F.layer_norm(x, x.shape[-1:], self.layer_norm.weight, self.layer_norm.bias, eps))


class _LMHead(nn.Module):
    def __init__(self, din, vocab):
        super().__init__()
        self.head = nn.Linear(din, vocab)

    def forward(self, x):
        return self.head(gelu(x))


class BigWigHead(nn.Module):
    def __init__(self, cfg: NTv3Config, din: int):
        super().__init__()
        self.n_tracks = [len(cfg.tracks_for(s)) for s in cfg.species]
        self.species_heads = nn.ModuleDict({str(h): _Head(din, n) for h, n in enumerate(self.n_tracks) if n})
        self.max_tracks = max(self.n_tracks, default=0)

    def forward(self, x: torch.Tensor, head_idx: torch.Tensor, eps: float) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], x.shape[1], self.max_tracks)
        for h in head_idx.unique().tolist():
            if str(h) not in self.species_heads:
                continue
            rows = (head_idx == h).nonzero().squeeze(1)
            y = F.softplus(self.species_heads[str(h)](x.index_select(0, rows), eps))
            out[rows, :, :y.shape[-1]] = y
        return out


class NTv3SequenceHead(nn.Module):
    """``ntk finetune classify|regress`` head on NTv3: the final per-base embedding mean-pooled over the real bases
    (``attention_mask``; N padding excluded) -> dense -> tanh -> out, as the NT sequence head. Regression heads
    report ``out * regression_std + regression_mean`` (config.json), in the targets' own units."""

    def __init__(self, cfg: NTv3Config):
        super().__init__()
        h = cfg.filter_list[0]
        self.dense = nn.Linear(h, h)
        self.out_proj = nn.Linear(h, cfg.num_labels)
        mean, std = cfg.extra.get("regression_mean"), cfg.extra.get("regression_std")
        self.register_buffer("target_mean", torch.tensor(mean, dtype=torch.float32) if mean else None,
                             persistent=False)
        self.register_buffer("target_std", torch.tensor(std, dtype=torch.float32) if std else None,
                             persistent=False)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.to(x.device).unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        out = self.out_proj(torch.tanh(self.dense(pooled)))
        if self.target_std is not None:
            out = out * self.target_std.to(out.dtype) + self.target_mean.to(out.dtype)
        return out


class NTv3SegmentHead(nn.Module):
    """``ntk finetune segment`` head on NTv3 (config ``ntk_head: "segment"``, ``features``): per base, LayerNorm of the
    final per-base embedding -> linear -> one (no, yes) logit pair per feature, ``[B, L, F, 2]`` over the whole
    window (the layout of the post-trained BED head, without its centre crop; ``ntk segment`` keeps the centre)."""

    def __init__(self, cfg: NTv3Config):
        super().__init__()
        self.n_features = len(cfg.segment_features)
        self.head = _Head(cfg.filter_list[0], 2 * self.n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return self.head(x, 1e-5).reshape(B, L, self.n_features, 2)


class NTv3Core(nn.Module):
    def __init__(self, cfg: NTv3Config):
        super().__init__()
        post = cfg.is_post_trained
        n_cond = 1 if post else 0
        c, eps = cfg.token_embed_dim, cfg.layer_norm_eps
        fl = cfg.filter_list
        self.embed_layer = nn.Embedding(cfg.alphabet_size, c)
        self.stem = Stem(c, fl[0])
        self.conv_tower_blocks = nn.ModuleList(
            TowerBlock(fl[i], fl[i + 1], "conv", n_cond, c, eps) for i in range(cfg.num_downsamples))
        self.transformer_blocks = nn.ModuleList(TransformerBlock(cfg, n_cond) for _ in range(cfg.num_layers))
        rev = fl[::-1]
        self.deconv_tower_blocks = nn.ModuleList(
            TowerBlock(rev[i], rev[i + 1], cfg.deconv_upsample_type, n_cond, c, eps)
            for i in range(cfg.num_downsamples))
        self.lm_head = _LMHead(fl[0], cfg.alphabet_size)
        if post:
            self.cond_tables = nn.ModuleList([nn.Embedding(cfg.conditions_vocab_size[0], c)])
            self.conditions_heads = nn.ModuleList([nn.Linear(cfg.embed_dim, cfg.conditions_vocab_size[0])])
            self.bigwig_head = BigWigHead(cfg, fl[0])
            self.bed_head = _Head(fl[0], 2 * len(cfg.bed_elements_names or []))


@dataclass
class NTv3Output:
    logits: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    after_transformer_embedding: torch.Tensor | None = None
    before_transformer_embedding: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    deconv_hidden_states: tuple[torch.Tensor, ...] | None = None
    species_logits: torch.Tensor | None = None
    bigwig_tracks_logits: torch.Tensor | None = None
    bed_tracks_logits: torch.Tensor | None = None
    crop: tuple[int, int] | None = None  # [start, end) of the heads' centre crop within the window
    segment_logits: torch.Tensor | None = None  # fine-tuned segment head: [B, L, F, 2], the whole window

    @property
    def last_hidden_state(self) -> torch.Tensor | None:
        return self.embedding

    @property
    def bed_probabilities(self) -> torch.Tensor | None:
        """P(element) per base of the crop: softmax over the last axis of ``bed_tracks_logits``, index 1."""
        if self.bed_tracks_logits is None:
            return None
        return torch.softmax(self.bed_tracks_logits.float(), dim=-1)[..., 1]

    @property
    def segment_probabilities(self) -> torch.Tensor | None:
        """Fine-tuned segment head: P(feature) per base of the whole window, ``[B, L, F]``."""
        if self.segment_logits is None:
            return None
        return torch.softmax(self.segment_logits.float(), dim=-1)[..., 1]

    def __getitem__(self, key: str):
        if key.startswith("embeddings_deconv_"):
            return self.deconv_hidden_states[int(key.rsplit("_", 1)[1]) - 1]
        if key.startswith("embeddings_"):
            return self.hidden_states[int(key.rsplit("_", 1)[1])]
        return getattr(self, key)


class NTv3(nn.Module):
    """NTv3 pre-trained or post-trained model; see the module docstring."""

    source: str | None = None  # the checkpoint directory it was loaded from (set by ntk.load_model)

    def __init__(self, cfg: NTv3Config, reference: str = "hf"):
        super().__init__()
        if reference not in ("hf", "jax"):
            raise ValueError("reference must be 'hf' or 'jax'")
        self.config = cfg
        self.reference = reference
        self.core = NTv3Core(cfg)
        self.tokenizer = NTv3Tokenizer(cfg.window_unit)
        # ``ntk finetune classify|regress`` checkpoints: a sequence head (``classifier.*`` tensors)
        self.classifier = NTv3SequenceHead(cfg) if cfg.num_labels else None
        # ``ntk finetune segment`` checkpoints: a per-base head (``segment_head.*`` tensors)
        self.segment_head = NTv3SegmentHead(cfg) if cfg.segment_features else None

    # -- conveniences ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def features(self) -> list[str]:
        """What ``ntk segment`` writes: the fine-tuned segment head's features, else the BED-head elements."""
        return self.config.segment_features or self.config.features

    @property
    def species(self) -> list[str]:
        return self.config.species

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def species_id(self, name: str) -> int:
        """Token id of a species name (ValueError listing the choices)."""
        table = self.config.species_to_token_id or {}
        if name not in self.config.species:
            choices = ", ".join(self.config.species) or "none: this is not a post-trained model"
            raise ValueError(f"unknown species {name!r}; this model has: {choices}")
        return int(table[name])

    def crop_bounds(self, length: int) -> tuple[int, int]:
        """[start, end) of the centre crop the BigWig/BED heads predict on, for a window of ``length``."""
        f = self.config.keep_target_center_fraction or 1.0
        if self.reference == "jax":
            c = int((1 - f) * length)
            return c // 2, length - c // 2
        n = int(length * f)
        s = (length - n) // 2
        return s, s + n

    # -- forward ------------------------------------------------------------------------------------
    def _ids(self, input_ids) -> torch.Tensor:
        if isinstance(input_ids, TokenBatch):
            input_ids = input_ids.input_ids
        ids = torch.as_tensor(np.asarray(input_ids) if isinstance(input_ids, (list, tuple, np.ndarray)) else input_ids)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        return ids.to(self.device, torch.long)

    def forward(self, input_ids, species_ids=None, output_hidden_states: bool = False, heads: bool | str = True,
                attention_mask=None) -> NTv3Output:
        """``attention_mask`` does not mask the Transformer (padding is ``N``, a real token; the released code runs
        the Transformer unmasked); it only selects the bases the fine-tuned sequence head pools. ``heads=False``
        stops after the per-base embedding; ``heads="classifier"`` (fine-tuned models) gives ``logits [B, K]`` of
        the sequence head; ``heads="segment"`` gives ``segment_logits [B, L, F, 2]`` of the fine-tuned per-base
        head only (``heads=True`` computes it too, besides the base's heads). A post-trained base fine-tuned by
        ntk is conditioned on the species it was fine-tuned with (``ntk_species``) unless ``species_ids`` is
        given."""
        cfg, core = self.config, self.core
        ids = self._ids(input_ids)
        B, L = ids.shape
        if species_ids is None and cfg.is_post_trained and cfg.finetune_species:
            species_ids = self.species_id(cfg.finetune_species)
        if heads == "classifier":
            if self.classifier is None:
                raise ValueError("this NTv3 model has no fine-tuned sequence head (ntk finetune classify|regress)")
            out = self(ids, species_ids=species_ids, output_hidden_states=output_hidden_states, heads=False)
            mask = torch.ones(B, L, dtype=torch.bool) if attention_mask is None else torch.as_tensor(attention_mask)
            out.logits = self.classifier(out.embedding, mask.bool())
            return out
        if heads == "segment":
            if self.segment_head is None:
                raise ValueError("this NTv3 model has no fine-tuned segment head (ntk finetune segment)")
            out = self(ids, species_ids=species_ids, output_hidden_states=output_hidden_states, heads=False)
            out.segment_logits = self.segment_head(out.embedding)
            return out
        unit = cfg.window_unit
        if L % unit:
            raise ValueError(f"NTv3 needs a length that is a multiple of {unit} (2^num_downsamples); got {L}")
        conds = None
        if cfg.is_post_trained:
            if species_ids is None:
                raise ValueError(f"this post-trained NTv3 model needs species_ids (species: {', '.join(cfg.species)})")
            sp = torch.as_tensor(species_ids if not isinstance(species_ids, int) else [species_ids])
            sp = sp.to(self.device, torch.long).reshape(-1)
            if sp.numel() == 1 and B > 1:
                sp = sp.expand(B)
            k = cfg.num_species_special_tokens or 6
            if sp.numel() != B or bool(((sp < k) | (sp >= cfg.conditions_vocab_size[0])).any()):
                raise ValueError(f"species_ids must be {B} ids in {k}..{cfg.conditions_vocab_size[0] - 1}")
            conds = [core.cond_tables[0](sp)]
        x = core.stem(core.embed_layer(ids))
        skips = []
        for blk in core.conv_tower_blocks:
            skips.append(x)
            x = blk(x, conds)
            x = F.avg_pool1d(x.transpose(1, 2), 2).transpose(1, 2)
        key_mask = None
        if self.reference == "jax" and not cfg.is_post_trained:
            key_mask = (ids != cfg.pad_token_id).view(B, -1, unit).any(-1)
        out = NTv3Output(before_transformer_embedding=x)
        hidden = [x]
        for blk in core.transformer_blocks:
            x = blk(x, conds, key_mask)
            hidden.append(x)
        out.after_transformer_embedding = x
        deconv = []
        for blk in core.deconv_tower_blocks:
            x = blk(x, conds)
            if cfg.use_skip_connection:
                x = x + skips.pop()
            deconv.append(x)
        out.embedding = x
        if output_hidden_states:
            out.hidden_states = tuple(hidden)
            out.deconv_hidden_states = tuple(deconv)
        if not heads:
            return out
        out.logits = core.lm_head(x)
        if cfg.is_post_trained:
            h = out.after_transformer_embedding.mean(dim=1)
            eps = 1e-6 if self.reference == "jax" else 1e-5
            out.species_logits = core.conditions_heads[0](gelu(h) if self.reference == "jax" else h)
            s, e = self.crop_bounds(L)
            out.crop = (s, e)
            xc = x[:, s:e]
            out.bigwig_tracks_logits = core.bigwig_head(xc, sp - (cfg.num_species_special_tokens or 6), eps)
            n_el = len(cfg.bed_elements_names or [])
            out.bed_tracks_logits = core.bed_head(xc, eps).reshape(B, e - s, n_el, 2)
        if self.segment_head is not None:
            out.segment_logits = self.segment_head(x)
        return out

    def embed(self, input_ids, species_ids=None, layer: int | None = None) -> torch.Tensor:
        """Per-base final embedding [B, L, C0] (``layer=None``), or the output of Transformer block ``layer``
        (0 = Transformer input, -1 = last block) [B, L/2^n, D]."""
        out = self(input_ids, species_ids=species_ids, output_hidden_states=layer is not None, heads=False)
        if layer is None:
            return out.embedding
        n = self.config.num_layers
        idx = layer if layer >= 0 else n + 1 + layer
        if not 0 <= idx <= n:
            raise ValueError(f"layer {layer} out of range for a {n}-layer model (0..{n} or -1..-{n + 1})")
        return out.hidden_states[idx]


# ---------------------------------------------------------------------------------------------------
# loading

def build_from_state_dict(cfg: NTv3Config, sd: dict[str, torch.Tensor], where: str) -> NTv3:
    """Build the model for ``cfg`` and load ``sd`` strictly (rotary ``inv_freq`` buffers ignored); raises
    ValueError naming missing / unexpected / mis-shaped tensors. A checkpoint of ``ntk finetune --method
    lora|ia3`` saved without ``--merge`` (config.json ``ntk_adapter``) gets its adapters re-created, loaded and
    folded into plain weights (the ``ntk_adapter`` entry is then dropped from the config)."""
    from .adapters import ADAPTER_KEY, apply_adapters, merge_adapters

    model = NTv3(cfg)
    adapter = cfg.extra.get(ADAPTER_KEY)
    if adapter:
        try:
            apply_adapters(model, adapter)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{where}: config.json {ADAPTER_KEY}: {e}") from None
    want = model.state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith("inv_freq")}
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    mismatched = [f"{k} {tuple(sd[k].shape)} != expected {tuple(want[k].shape)}"
                  for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                parts.append(f"{len(items)} {label}: " + ", ".join(items[:4]) + (" ..." if len(items) > 4 else ""))
        raise ValueError(f"{where}: weights do not match config.json: " + "; ".join(parts))
    model.load_state_dict({k: sd[k].float() for k in want}, strict=True)
    if adapter:
        merge_adapters(model)
        cfg.extra.pop(ADAPTER_KEY)
    return model

