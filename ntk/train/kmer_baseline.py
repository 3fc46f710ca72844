"""The k-mer baseline of ``ntk finetune classify|regress`` (``--baseline kmer``): every user sees whether the model
beats it.

Features: the frequencies of all k-mers for k = 1..``k_max`` (default 6: 4 + 16 + ... + 4096 = 5,460 features),
each k normalised by the number of k-mers of that length in the sequence (k-mers with N are skipped), then
standardised with the training set's mean and standard deviation. Model: L2-regularised logistic regression
(softmax for single-label classes, one sigmoid per label for multi-label) or ridge regression (standardised
targets), fitted full-batch with L-BFGS; the L2 strength is chosen from a small grid by the validation loss.
Pure numpy/torch, one thread's worth of work for up to ~20,000 sequences.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_CODE = np.full(256, 4, dtype=np.int64)
for _i, _c in enumerate(b"ACGT"):
    _CODE[_c] = _i
    _CODE[_c + 32] = _i  # lowercase

L2_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)  # strongest first: each fit starts from the previous one


def n_features(k_max: int) -> int:
    return sum(4 ** k for k in range(1, k_max + 1))


def kmer_features(sequences: list[str], k_max: int = 6) -> np.ndarray:
    """[N, sum 4^k] float32 k-mer frequencies, k = 1..k_max."""
    offsets = np.cumsum([0] + [4 ** k for k in range(1, k_max + 1)])
    out = np.zeros((len(sequences), offsets[-1]), dtype=np.float32)
    for r, s in enumerate(sequences):
        codes = _CODE[np.frombuffer(s.encode("ascii", "replace"), dtype=np.uint8)]
        n = len(codes)
        idx = np.zeros(n, dtype=np.int64)
        bad = np.zeros(n, dtype=bool)
        for k in range(1, k_max + 1):
            m = n - k + 1
            if m <= 0:
                break
            # k-mer index at each start: previous (k-1)-mer index * 4 + the new base
            idx = idx[:m] * 4 + np.minimum(codes[k - 1:k - 1 + m], 3)
            bad = bad[:m] | (codes[k - 1:k - 1 + m] == 4)
            good = idx[~bad]
            if len(good):
                out[r, offsets[k - 1]:offsets[k]] = np.bincount(good, minlength=4 ** k) / len(good)
    return out


@dataclass
class KmerBaseline:
    problem_type: str
    k_max: int
    l2: float
    mean: np.ndarray
    std: np.ndarray
    weight: torch.Tensor
    bias: torch.Tensor
    y_mean: np.ndarray | None = None
    y_std: np.ndarray | None = None

    def outputs(self, sequences: list[str]) -> np.ndarray:
        """Logits (classification) or predictions in target units (regression), as the model's head gives."""
        x = torch.from_numpy((kmer_features(sequences, self.k_max) - self.mean) / self.std)
        with torch.no_grad():
            out = (x @ self.weight + self.bias).numpy()
        if self.problem_type == "regression":
            out = out * self.y_std + self.y_mean
        return out


def _loss(problem_type: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if problem_type == "single_label_classification":
        return F.cross_entropy(z, y)
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(z, y)
    return ((z - y) ** 2).mean()


def _fit(x: torch.Tensor, y: torch.Tensor, problem_type: str, n_out: int, l2: float, max_iter: int = 100,
         start=None):
    w = torch.zeros(x.shape[1], n_out, dtype=torch.float32) if start is None else start[0].clone()
    b = torch.zeros(n_out, dtype=torch.float32) if start is None else start[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = _loss(problem_type, x @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_kmer_baseline(train_seqs: list[str], y_train: np.ndarray, val_seqs: list[str], y_val: np.ndarray,
                      problem_type: str, k_max: int = 6, l2_grid=L2_GRID) -> KmerBaseline:
    """Fit on the training split along ``l2_grid`` (strongest first, each fit warm-started from the previous
    one), keep the fit with the lowest validation loss; stop once the validation loss has risen twice."""
    xtr = kmer_features(train_seqs, k_max)
    mean = xtr.mean(0)
    std = xtr.std(0) + 1e-6
    x = torch.from_numpy((xtr - mean) / std)
    xv = torch.from_numpy((kmer_features(val_seqs, k_max) - mean) / std)
    y_mean = y_std = None
    if problem_type == "single_label_classification":
        n_out = int(max(y_train.max(), y_val.max() if len(y_val) else 0)) + 1
        yt, yv = torch.from_numpy(y_train.astype(np.int64)), torch.from_numpy(y_val.astype(np.int64))
    elif problem_type == "multi_label_classification":
        n_out = y_train.shape[1]
        yt, yv = torch.from_numpy(y_train.astype(np.float32)), torch.from_numpy(y_val.astype(np.float32))
    else:
        y2 = y_train.reshape(len(y_train), -1).astype(np.float32)
        y_mean, y_std = y2.mean(0), np.maximum(y2.std(0), 1e-6)
        n_out = y2.shape[1]
        yt = torch.from_numpy((y2 - y_mean) / y_std)
        yv = torch.from_numpy((y_val.reshape(len(y_val), -1).astype(np.float32) - y_mean) / y_std)
    best = prev = None
    worse = 0
    with torch.enable_grad():
        for l2 in l2_grid:
            w, b = _fit(x, yt, problem_type, n_out, l2, start=prev)
            prev = (w, b)
            with torch.no_grad():
                v = float(_loss(problem_type, xv @ w + b, yv))
            if best is None or v < best[0]:
                best, worse = (v, l2, w, b), 0
            else:
                worse += 1
                if worse == 2:
                    break
    _, l2, w, b = best
    if problem_type == "regression" and y_train.ndim == 1:
        w, b, y_mean, y_std = w[:, 0], b[0], y_mean[0], y_std[0]
    return KmerBaseline(problem_type, k_max, l2, mean, std, w, b, y_mean, y_std)


__all__ = ["kmer_features", "fit_kmer_baseline", "KmerBaseline", "n_features"]
