"""The Nucleotide Transformer model: encoder + optional LM head, SegmentNT head, or sequence head."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import NTConfig
from .encoder import ESM
from .heads import NUCLEOTIDE_HEAD_KEY, LMHead, NucleotideHead, SequenceHead, UNet1D
from .tokenizer import NucleotideTokenizer, TokenBatch

NUC_PER_TOKEN = 6
HEADS = ("lm", "segment", "classifier")  # names accepted by ``forward(heads=...)``


@dataclass
class ModelOutput:
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    logits: torch.Tensor | None = None  # [B, T, V] (LM head) or [B, num_labels] (sequence head)
    segment_logits: torch.Tensor | None = None  # [B, 6*(T-1), F, 2]
    segment_probabilities: torch.Tensor | None = None  # [B, 6*(T-1), F]

    def __getitem__(self, key: str):
        return getattr(self, key)


def segment_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``softmax(logits)[..., 1]`` of two-class logits [..., 2], float32, computed as ``sigmoid(l1 - l0)``: the
    same value, without a softmax over a dimension of 2 (a slow kernel on CPUs)."""
    logits = logits.float()
    return torch.sigmoid(logits[..., 1] - logits[..., 0])


def wanted_heads(heads) -> frozenset[str]:
    """``forward``'s ``heads`` argument as a set of names: True -> all of :data:`HEADS`, False/None -> none."""
    if heads is True:
        return frozenset(HEADS)
    if heads is False or heads is None:
        return frozenset()
    names = frozenset([heads] if isinstance(heads, str) else heads)
    unknown = sorted(names - set(HEADS))
    if unknown:
        raise ValueError(f"unknown head {unknown[0]!r} (heads: {', '.join(HEADS)}, or True/False)")
    return names


class NucleotideTransformer(nn.Module):
    """``m(input_ids, attention_mask=None, output_hidden_states=False, heads=True)`` -> :class:`ModelOutput`.

    ``hidden_states`` follows HF: ``[0]`` embedding output, ``[i]`` output of block i, ``[L]`` after the final
    LayerNorm (= ``last_hidden_state``).

    ``unpadded=True`` (no ``attention_mask``): the caller guarantees that no position is padded (SegmentNT
    windows, fixed-length windows). No mask is built or checked, so the forward has no data-dependent control
    flow (``torch.compile`` traces it whole) and SDPA gets ``attn_mask=None`` (its flash kernel on CUDA).
    Without it, the mask is ``input_ids != pad`` and an all-True mask is dropped after a check (eager mode).

    ``heads`` says which heads run: ``True`` (default) every head the model has, ``False`` none (trunk only:
    ``last_hidden_state``/``hidden_states``), or a name or collection of names from :data:`HEADS` (``"lm"`` ->
    ``logits``, ``"segment"`` -> ``segment_logits``/``segment_probabilities``, ``"classifier"`` -> ``logits``).
    Heads whose output is not read cost real time: the 4,107-way LM head is about as expensive as a small trunk.
    A named head the model does not have leaves its field ``None``.
    """

    source: str | None = None  # the checkpoint directory it was loaded from (set by ntk.load_model)

    def __init__(self, cfg: NTConfig, lm_head: bool | None = None, seq_head_labels: int | None = None):
        super().__init__()
        self.config = cfg
        self.esm = ESM(cfg)
        if lm_head is None:
            lm_head = not cfg.is_segmentation and any(a.endswith("MaskedLM") for a in cfg.architectures or [])
        self.lm_head = LMHead(cfg) if lm_head else None
        if cfg.is_segmentation:
            self.unet = UNet1D(cfg.hidden_size, num_layers=cfg.num_layers_head or 2)
            self.fc = nn.Linear(cfg.hidden_size, NUC_PER_TOKEN * 2 * len(cfg.features or []))
        else:
            self.unet = self.fc = None
        self.tokenizer = NucleotideTokenizer(cfg.tokenizer_version)
        nuc = cfg.extra.get(NUCLEOTIDE_HEAD_KEY) if cfg.is_segmentation else None
        self.nuc_head = (NucleotideHead(cfg.hidden_size, len(cfg.features or []), self.tokenizer, int(nuc["channels"]),
                                        int(nuc["kernel"]), [int(d) for d in nuc["dilations"]]) if nuc else None)
        n_labels = seq_head_labels if seq_head_labels is not None else cfg.num_labels
        self.classifier = SequenceHead(cfg, n_labels) if n_labels else None

    # -- conveniences -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def features(self) -> list[str]:
        return list(self.config.features or [])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _as_ids(self, input_ids, attention_mask, unpadded: bool = False):
        """``(input_ids, attention_mask)`` on the model's device; ``unpadded``: the mask is None (nothing padded)."""
        if isinstance(input_ids, TokenBatch):
            attention_mask = input_ids.attention_mask if attention_mask is None else attention_mask
            input_ids = input_ids.input_ids
        if isinstance(input_ids, np.ndarray) or isinstance(input_ids, (list, tuple)):
            input_ids = torch.as_tensor(np.asarray(input_ids))
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        input_ids = input_ids.to(self.device, torch.long)
        if unpadded:
            if attention_mask is not None:
                raise ValueError("unpadded=True takes no attention_mask (nothing is padded)")
            return input_ids, None
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_token_id
        else:
            attention_mask = torch.as_tensor(attention_mask).to(self.device).bool()
            if attention_mask.dim() == 1:
                attention_mask = attention_mask.unsqueeze(0)
        return input_ids, attention_mask

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False,
                rescaling_factor: float | None = None, heads=True, unpadded: bool = False) -> ModelOutput:
        want = wanted_heads(heads)
        input_ids, attention_mask = self._as_ids(input_ids, attention_mask, unpadded)
        x, hidden = self.esm(input_ids, attention_mask, output_hidden_states=output_hidden_states,
                             rescaling_factor=rescaling_factor)
        out = ModelOutput(last_hidden_state=x, hidden_states=tuple(hidden) if hidden is not None else None)
        if self.lm_head is not None and "lm" in want:
            out.logits = self.lm_head(x)
        if self.unet is not None and "segment" in want:
            out.segment_logits = self.segment_head(x, input_ids)
            out.segment_probabilities = segment_probabilities(out.segment_logits)
        if self.classifier is not None and "classifier" in want:
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
            out.logits = self.classifier(x, mask)
        return out

    def segment_head(self, x: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final-LN embeddings [B, T, H] -> per-nucleotide logits [B, 6*(T-1), F, 2]. ``input_ids`` [B, T] (the
        window's token ids, CLS first): needed by a model with ntk's nucleotide head (it reads the bases)."""
        e = x[:, 1:]  # drop CLS
        B, L, _ = e.shape
        levels = 2 ** self.unet.num_layers
        if L % levels:
            raise ValueError(f"SegmentNT needs a number of DNA tokens divisible by {levels} (got {L}); "
                             f"use windows whose length is a multiple of {NUC_PER_TOKEN * levels} nt")
        y = self.unet(e.transpose(1, 2)).transpose(1, 2)
        logits = self.fc(torch.nn.functional.silu(y)).reshape(B, L * NUC_PER_TOKEN, -1)
        if self.nuc_head is not None:
            if input_ids is None:
                raise ValueError("this model has ntk's nucleotide head: segment_head needs the window's input_ids")
            logits = logits + self.nuc_head(y, input_ids[:, 1:])
        return logits.reshape(B, L * NUC_PER_TOKEN, len(self.config.features), 2)

    def embed(self, input_ids, attention_mask=None, layer: int = -1, unpadded: bool = False) -> torch.Tensor:
        """Hidden states of one layer (HF indexing; -1 = after the final LayerNorm), stopping early when possible."""
        input_ids, attention_mask = self._as_ids(input_ids, attention_mask, unpadded)
        L = self.config.num_hidden_layers
        idx = layer if layer >= 0 else L + 1 + layer
        if not 0 <= idx <= L:
            raise ValueError(f"layer {layer} out of range for a {L}-layer model (0..{L} or -1..-{L + 1})")
        if idx == L:
            return self.esm(input_ids, attention_mask)[0]
        x, hidden = self.esm(input_ids, attention_mask, output_hidden_states=True, layers=idx)
        return hidden[idx]
