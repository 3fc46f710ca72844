"""Evaluation metrics for fine-tuning, in numpy (no scikit-learn).

Classification: :func:`mcc` (binary and multi-class, Gorodkin's R_K), :func:`accuracy`, :func:`f1` (binary or
macro), :func:`auroc` and :func:`auprc` (average precision, the step-wise area scikit-learn reports; ties are
handled by grouping equal scores). Regression: :func:`pearson`, :func:`spearman` (Pearson of average ranks),
:func:`r2`. Segmentation at nucleotide level: :class:`SegmentationMetrics` accumulates, per feature, the
confusion counts at a threshold (exact MCC) and score histograms for positives and negatives (AUPRC/AUROC from
4096 log-odds bins), so memory stays flat however many nucleotides are evaluated.

Degenerate cases (a single class present, constant predictions) give 0.0 for MCC/correlations and NaN for
AUROC/AUPRC when they are undefined; metrics.json writes NaN as null.
"""
from __future__ import annotations

import math

import numpy as np


# -- classification --------------------------------------------------------------------------------
def confusion_matrix(y_true, y_pred, n_classes: int | None = None) -> np.ndarray:
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    k = n_classes if n_classes is not None else int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def mcc_from_confusion(cm: np.ndarray) -> float:
    """Matthews correlation coefficient of a K x K confusion matrix (rows = truth)."""
    cm = np.asarray(cm, dtype=np.float64)
    t = cm.sum(1)  # true occurrences per class
    p = cm.sum(0)  # predictions per class
    c = np.trace(cm)
    s = cm.sum()
    num = c * s - (t * p).sum()
    den = math.sqrt(max(s * s - (p * p).sum(), 0.0)) * math.sqrt(max(s * s - (t * t).sum(), 0.0))
    return float(num / den) if den > 0 else 0.0


def mcc(y_true, y_pred, n_classes: int | None = None) -> float:
    return mcc_from_confusion(confusion_matrix(y_true, y_pred, n_classes))


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    return float((y_true == y_pred).mean()) if y_true.size else float("nan")


def f1(y_true, y_pred, n_classes: int | None = None, average: str = "auto") -> float:
    """F1 of class 1 for binary problems, macro-averaged F1 over classes otherwise (``average='macro'``)."""
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    tp = np.diag(cm)
    prec_den, rec_den = cm.sum(0), cm.sum(1)
    den = prec_den + rec_den
    per_class = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    if average == "auto":
        average = "binary" if cm.shape[0] == 2 else "macro"
    if average == "binary":
        return float(per_class[1])
    present = rec_den > 0
    return float(per_class[present].mean()) if present.any() else 0.0


def _binary_curve(y_true, score):
    """Cumulative TP and FP counts at each distinct score threshold (descending)."""
    y = np.asarray(y_true).ravel().astype(bool)
    s = np.asarray(score, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last_of_group]
    fp = (last_of_group + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64)


def _auroc_from_counts(tp, fp) -> float:
    P, N = tp[-1], fp[-1]
    if P == 0 or N == 0:
        return float("nan")
    tpr = np.r_[0.0, tp / P]
    fpr = np.r_[0.0, fp / N]
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def _auprc_from_counts(tp, fp) -> float:
    P = tp[-1]
    if P == 0:
        return float("nan")
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / P
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def auroc(y_true, score) -> float:
    """Area under the ROC curve for binary labels (NaN when only one class is present)."""
    return _auroc_from_counts(*_binary_curve(y_true, score))


def auprc(y_true, score) -> float:
    """Average precision: sum over thresholds of (recall step) x precision (NaN without positives)."""
    return _auprc_from_counts(*_binary_curve(y_true, score))


def one_vs_rest(metric, y_true, proba: np.ndarray) -> float:
    """Macro average of a binary score metric over classes (one vs rest), skipping undefined classes."""
    y_true = np.asarray(y_true).ravel()
    vals = [metric(y_true == k, proba[:, k]) for k in range(proba.shape[1])]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def classification_metrics(y_true, proba: np.ndarray) -> dict[str, float]:
    """Single-label classification: ``y_true`` int [N], ``proba`` [N, K] (softmax)."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    proba = np.asarray(proba, dtype=np.float64)
    k = proba.shape[1]
    pred = proba.argmax(1)
    out = {"mcc": mcc(y_true, pred, k), "accuracy": accuracy(y_true, pred), "f1": f1(y_true, pred, k)}
    if k == 2:
        out["auroc"] = auroc(y_true == 1, proba[:, 1])
        out["auprc"] = auprc(y_true == 1, proba[:, 1])
    else:
        out["auroc"] = one_vs_rest(auroc, y_true, proba)
        out["auprc"] = one_vs_rest(auprc, y_true, proba)
    return out


def multilabel_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Multi-label classification: ``y_true`` 0/1 [N, K], ``proba`` sigmoid [N, K]; macro averages over labels."""
    y_true = np.asarray(y_true).astype(bool)
    proba = np.asarray(proba, dtype=np.float64)
    pred = proba >= threshold
    per = {"mcc": [], "f1": [], "auroc": [], "auprc": []}
    for j in range(y_true.shape[1]):
        per["mcc"].append(mcc(y_true[:, j], pred[:, j], 2))
        per["f1"].append(f1(y_true[:, j], pred[:, j], 2, "binary"))
        per["auroc"].append(auroc(y_true[:, j], proba[:, j]))
        per["auprc"].append(auprc(y_true[:, j], proba[:, j]))
    out = {k: _nanmean(v) for k, v in per.items()}
    out["accuracy"] = float((pred == y_true).all(1).mean())  # exact-match ratio
    return out


# -- regression ------------------------------------------------------------------------------------
def pearson(y_true, y_pred) -> float:
    a = np.asarray(y_true, dtype=np.float64).ravel()
    b = np.asarray(y_pred, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def rankdata(x) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], xs.size]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions starts+1..ends
    ranks = np.empty_like(x)
    ranks[order] = avg[group]
    return ranks


def spearman(y_true, y_pred) -> float:
    return pearson(rankdata(y_true), rankdata(y_pred))


def r2(y_true, y_pred) -> float:
    a = np.asarray(y_true, dtype=np.float64).ravel()
    b = np.asarray(y_pred, dtype=np.float64).ravel()
    ss_tot = float(((a - a.mean()) ** 2).sum())
    ss_res = float(((a - b) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: list[str] | None = None) -> dict[str, float]:
    """Per-target Pearson/Spearman/R² plus their mean over targets (the unprefixed keys)."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    out: dict[str, float] = {}
    per = {"pearson": [], "spearman": [], "r2": [], "mse": []}
    for j in range(y_true.shape[1]):
        vals = {"pearson": pearson(y_true[:, j], y_pred[:, j]), "spearman": spearman(y_true[:, j], y_pred[:, j]),
                "r2": r2(y_true[:, j], y_pred[:, j]), "mse": float(((y_true[:, j] - y_pred[:, j]) ** 2).mean())}
        for k, v in vals.items():
            per[k].append(v)
            if y_true.shape[1] > 1:
                out[f"{k}/{names[j] if names else j}"] = v
    for k, v in per.items():
        out[k] = float(np.mean(v))
    return out


# -- segmentation (nucleotide level, streaming) ----------------------------------------------------
class SegmentationMetrics:
    """Accumulate per-feature nucleotide-level metrics batch by batch with constant memory.

    ``update(probabilities [..., F], targets [..., F])``; ``result()`` -> ``mcc/<feature>``, ``auprc/<feature>``,
    ``auroc/<feature>`` and their means over features (``mcc``, ``auprc``, ``auroc``; features without positives
    in the evaluated data are left out of the AUPRC/AUROC means). MCC is exact at ``threshold``; AUPRC/AUROC use
    ``bins`` equal-width bins of the log-odds in [-16, 16] (exact up to ties within a bin; log-odds rather than
    probability bins keep rare features such as splice sites, whose scores all lie far below 0.5, resolvable).
    """

    def __init__(self, features: list[str], threshold: float = 0.5, bins: int = 4096):
        self.features = list(features)
        self.threshold = threshold
        self.bins = bins
        F = len(self.features)
        self.cm = np.zeros((F, 2, 2), dtype=np.int64)
        self.hist_pos = np.zeros((F, bins), dtype=np.int64)
        self.hist_neg = np.zeros((F, bins), dtype=np.int64)

    def update(self, proba, target) -> None:
        p = np.asarray(proba, dtype=np.float32).reshape(-1, len(self.features))
        t = np.asarray(target).reshape(-1, len(self.features)).astype(bool)
        pred = p >= self.threshold
        with np.errstate(divide="ignore"):
            logit = np.log(np.clip(p, 1e-12, 1.0)) - np.log(np.clip(1.0 - p, 1e-12, 1.0))
        b = np.clip(((logit + 16.0) / 32.0 * self.bins).astype(np.int64), 0, self.bins - 1)
        for j in range(len(self.features)):
            tj, pj = t[:, j], pred[:, j]
            self.cm[j] += np.bincount(tj.astype(np.int64) * 2 + pj, minlength=4).reshape(2, 2)
            self.hist_pos[j] += np.bincount(b[tj, j], minlength=self.bins)
            self.hist_neg[j] += np.bincount(b[~tj, j], minlength=self.bins)

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        agg = {"mcc": [], "auprc": [], "auroc": []}
        for j, f in enumerate(self.features):
            tp = np.cumsum(self.hist_pos[j][::-1]).astype(np.float64)  # descending thresholds
            fp = np.cumsum(self.hist_neg[j][::-1]).astype(np.float64)
            vals = {"mcc": mcc_from_confusion(self.cm[j]), "auprc": _auprc_from_counts(tp, fp),
                    "auroc": _auroc_from_counts(tp, fp)}
            for k, v in vals.items():
                out[f"{k}/{f}"] = v
                agg[k].append(v)
            out[f"positive_fraction/{f}"] = float(self.cm[j][1].sum() / max(self.cm[j].sum(), 1))
        for k, v in agg.items():
            out[k] = _nanmean(v)
        return out


def _nanmean(v) -> float:
    v = [x for x in v if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


# which direction is better, for early stopping on a chosen metric
LOWER_IS_BETTER = {"loss", "mse"}


def is_better(metric: str, new: float, best: float | None) -> bool:
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return False
    if best is None:
        return True
    base = metric.split("/")[0]
    return new < best if base in LOWER_IS_BETTER else new > best
