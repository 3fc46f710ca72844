"""Fine-tuning metrics against brute-force definitions (no scikit-learn available: independent formulas)."""
import math

import numpy as np
import pytest

from ntk.train import metrics as M


def brute_auroc(y, s):
    pos, neg = s[y], s[~y]
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return gt / (len(pos) * len(neg))


def brute_ap(y, s):
    # average precision: mean over distinct thresholds of precision x recall increment
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        sel = s >= t
        tp = (sel & y).sum()
        r = tp / y.sum()
        ap += (r - prev_r) * tp / sel.sum()
        prev_r = r
    return ap


def brute_binary_mcc(y, p):
    tp, tn = float((y & p).sum()), float((~y & ~p).sum())
    fp, fn = float((~y & p).sum()), float((y & ~p).sum())
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / den if den else 0.0


def test_binary_metrics_match_definitions():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300) + 0.4 * y, 2)  # rounded: ties present
    assert M.auroc(y, s) == pytest.approx(brute_auroc(y, s), abs=1e-12)
    assert M.auprc(y, s) == pytest.approx(brute_ap(y, s), abs=1e-12)
    p = s > 0.7
    assert M.mcc(y, p) == pytest.approx(brute_binary_mcc(y, p), abs=1e-12)
    assert M.accuracy(y, p) == pytest.approx((y == p).mean())
    prec, rec = (y & p).sum() / p.sum(), (y & p).sum() / y.sum()
    assert M.f1(y, p) == pytest.approx(2 * prec * rec / (prec + rec))


def test_known_values_and_degenerate_cases():
    assert M.mcc([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert M.mcc([0, 1, 1, 0], [1, 0, 0, 1]) == pytest.approx(-1.0)
    assert M.mcc([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0  # constant prediction
    assert M.auroc([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1]) == 1.0
    assert math.isnan(M.auroc([1, 1], [0.2, 0.3]))
    assert math.isnan(M.auprc([0, 0], [0.2, 0.3]))
    assert M.auprc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)


def test_multiclass_mcc_and_macro_f1():
    # Gorodkin R_K on a hand-checked 3-class confusion matrix
    cm = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    y, p = [], []
    for i in range(3):
        for j in range(3):
            y += [i] * cm[i, j]
            p += [j] * cm[i, j]
    s, c = cm.sum(), np.trace(cm)
    t, q = cm.sum(1), cm.sum(0)
    want = (c * s - t @ q) / math.sqrt((s * s - q @ q) * (s * s - t @ t))
    assert M.mcc(y, p) == pytest.approx(want)
    f1s = [2 * cm[k, k] / (cm[k].sum() + cm[:, k].sum()) for k in range(3)]
    assert M.f1(y, p) == pytest.approx(np.mean(f1s))
    proba = np.eye(3)[p] * 0.8 + 0.2 / 3
    out = M.classification_metrics(y, proba)
    assert out["accuracy"] == pytest.approx(c / s)
    assert set(out) == {"mcc", "accuracy", "f1", "auroc", "auprc"}


def test_regression_metrics():
    rng = np.random.default_rng(1)
    a = rng.normal(size=200)
    b = 2 * a + rng.normal(scale=0.5, size=200)
    assert M.pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    # spearman: monotone transform keeps 1.0, ties get average ranks
    assert M.spearman(a, np.exp(a)) == pytest.approx(1.0)
    assert list(M.rankdata([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0]
    assert M.r2(a, a) == 1.0
    assert M.r2(a, np.full_like(a, a.mean())) == pytest.approx(0.0)
    out = M.regression_metrics(np.c_[a, b], np.c_[a, b * 0 + 1], names=["x", "y"])
    assert out["pearson/x"] == pytest.approx(1.0) and out["pearson/y"] == 0.0
    assert out["pearson"] == pytest.approx(0.5)


def test_segmentation_metrics_stream_equals_exact():
    rng = np.random.default_rng(2)
    F = 3
    t = rng.random((4, 500, F)) < np.array([0.5, 0.1, 0.01])
    p = np.clip(rng.random((4, 500, F)) * 0.7 + 0.3 * t, 0, 1).astype(np.float32)
    p = np.round(p, 2)  # one score per (log-odds) histogram bin: binned AUPRC equals the exact one
    acc = M.SegmentationMetrics(["a", "b", "c"])
    for i in range(4):  # streamed batch by batch
        acc.update(p[i], t[i])
    r = acc.result()
    for j, f in enumerate("abc"):
        tj, pj = t[..., j].ravel(), p[..., j].ravel()
        assert r[f"mcc/{f}"] == pytest.approx(brute_binary_mcc(tj, pj >= 0.5), abs=1e-12)
        assert r[f"auprc/{f}"] == pytest.approx(M.auprc(tj, pj), abs=2e-3)
        assert r[f"auroc/{f}"] == pytest.approx(M.auroc(tj, pj), abs=2e-3)
    assert r["mcc"] == pytest.approx(np.mean([r["mcc/a"], r["mcc/b"], r["mcc/c"]]))


def test_is_better_direction():
    assert M.is_better("mcc", 0.5, 0.4) and not M.is_better("mcc", 0.3, 0.4)
    assert M.is_better("loss", 0.3, 0.4) and M.is_better("mse/x", 1.0, 2.0)
    assert not M.is_better("mcc", float("nan"), 0.1) and M.is_better("auprc", 0.0, None)
