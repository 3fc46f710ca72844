"""Run a fine-tuned sequence head (``ntk finetune classify|regress``) over tokenized records: what ``ntk predict``
and ``ntk finetune``'s evaluation share (a module shared by pipelines, not a job of its own)."""
from __future__ import annotations

import numpy as np

from ..train.finetune_data import eval_batches


def sequence_outputs(model, ids: list[np.ndarray], batch_size: int, pad_id: int) -> np.ndarray:
    """Head outputs (logits, or regression values) ``[N, K]`` float32 for tokenized sequences, in input order."""
    out = None
    dev = model.device
    unit = getattr(model.tokenizer, "unit", 1)  # NTv3: lengths a multiple of 2^num_downsamples (pad_id: N)
    for pos, batch in eval_batches(ids, None, batch_size, pad_id, unit):
        o = model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                  heads="classifier").logits
        o = o.float().cpu().numpy()
        if out is None:
            out = np.empty((len(ids), o.shape[1]), dtype=np.float32)
        out[pos] = o
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def pad_token(model) -> int:
    """The id batches are padded with: ``<pad>`` for NT, ``N`` for NTv3 (never ``<pad>``; excluded from pooling)."""
    return model.tokenizer.n_id if model.config.family.startswith("ntv3") else model.config.pad_token_id
