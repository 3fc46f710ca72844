"""BERT masking for masked-language-model pretraining, and the masked-LM loss.

Masking (the BERT / Nucleotide Transformer recipe): every token that is not ``<cls>``/``<pad>`` (or another
special token) is selected with probability ``mask_prob`` (0.15); a selected token becomes ``<mask>`` with
probability 0.8, a random 6-mer token with probability 0.1, and is kept unchanged with probability 0.1. The loss is
computed at the selected positions only (labels ``-100`` elsewhere). Vectorised numpy, driven by the caller's
``numpy.random.Generator`` so a stream is reproducible from its seed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100


def bert_mask(ids: np.ndarray, rng: np.random.Generator, mask_id: int, first_regular_id: int,
              kmer_range: tuple[int, int], mask_prob: float = 0.15, p_mask: float = 0.8,
              p_random: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(input_ids, labels)`` for a [B, T] int array of token ids.

    ``first_regular_id``: ids below it are special tokens (never selected); ``kmer_range``: [lo, hi) ids that
    random replacements are drawn from (the 6-mer tokens).
    """
    ids = np.asarray(ids)
    selectable = ids >= first_regular_id
    selected = (rng.random(ids.shape) < mask_prob) & selectable
    action = rng.random(ids.shape)
    random_ids = rng.integers(kmer_range[0], kmer_range[1], size=ids.shape)
    inputs = ids.copy()
    inputs[selected & (action < p_mask)] = mask_id
    to_random = selected & (action >= p_mask) & (action < p_mask + p_random)
    inputs[to_random] = random_ids[to_random]
    labels = np.where(selected, ids, IGNORE)
    return inputs, labels


def masked_lm_loss(model: torch.nn.Module, lm_head: torch.nn.Module, batch: dict, static_shapes: bool = False,
                   mask_id: int | None = None) -> tuple[torch.Tensor, dict]:
    """Cross-entropy at the selected positions; metrics: masked-token accuracy, token counts.

    The LM head runs only on the selected positions (~15% of tokens: the 6-mer vocabulary projection dominates
    the cost of small models) unless ``static_shapes`` (XLA), where it runs on every position so that shapes do
    not depend on the mask. ``mask_id`` adds ``masked_loss``: the loss at positions shown as ``<mask>`` only.
    """
    input_ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    hidden = model(input_ids, attn, heads=False).last_hidden_state
    sel = labels != IGNORE
    if static_shapes:
        logits = lm_head(hidden).float()
        per_token = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
        n = sel.sum()
        loss = per_token.sum() / n.clamp_min(1)
        hits = ((logits.argmax(-1) == labels) & sel).sum()
        metrics = {"accuracy": hits.float() / n.clamp_min(1)}
        if mask_id is not None:
            shown = (input_ids == mask_id) & sel
            metrics["masked_loss"] = (per_token * shown.flatten()).sum() / shown.sum().clamp_min(1)
    else:
        logits = lm_head(hidden[sel]).float()
        target = labels[sel]
        per_token = F.cross_entropy(logits, target, reduction="none")
        n = sel.sum()
        # an (improbable) batch without any selected token contributes a zero loss that still touches the graph
        loss = per_token.sum() / n.clamp_min(1) if per_token.numel() else lm_head(hidden[:, 0]).float().sum() * 0.0
        metrics = {"accuracy": (logits.argmax(-1) == target).float().sum() / n.clamp_min(1)}
        if mask_id is not None:
            shown = input_ids[sel] == mask_id
            metrics["masked_loss"] = (per_token * shown).sum() / shown.sum().clamp_min(1)
    metrics["tokens"] = attn.sum()
    metrics["n_masked"] = n
    return loss, metrics
