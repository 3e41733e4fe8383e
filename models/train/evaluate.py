"""Metrics, the checkout operating point and the drift reference bins.

Conventions shared with the server and the model card:
- a promise is a positive decision (the request is answered "yes");
- oversell_rate = (promised and label == 0) / rows;
- false_negative_rate = (not promised and label == 1) / (label == 1);
- the model promises iff its calibrated probability p >= threshold.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

LAG_BUCKETS = (("<=1", None, 1.0), ("1-3", 1.0, 3.0), (">3", 3.0, None))


def both_classes(y: np.ndarray) -> bool:
    return y.size > 0 and 0 < int(np.sum(y)) < y.size


def roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if both_classes(y) else None


def pr_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(average_precision_score(y, p)) if both_classes(y) else None


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, np.float64) - y) ** 2))


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over `bins` equal-width bins of p in [0, 1]."""
    p = np.asarray(p, np.float64)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.sum() / p.size * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, list]:
    """Per equal-width bin: mean predicted p, observed positive rate, count."""
    p = np.asarray(p, np.float64)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    mean_p, rate, count = [], [], []
    for b in range(bins):
        mask = index == b
        count.append(int(mask.sum()))
        mean_p.append(float(p[mask].mean()) if mask.any() else None)
        rate.append(float(y[mask].mean()) if mask.any() else None)
    return {"mean_predicted": mean_p, "observed_rate": rate, "count": count}


def rates(promise: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    """(oversell_rate, false_negative_rate) of a promise decision."""
    promise = np.asarray(promise, bool)
    y = np.asarray(y, np.int64)
    rows = y.size
    positives = int(y.sum())
    oversell = float(np.sum(promise & (y == 0)) / rows) if rows else None
    fn = float(np.sum(~promise & (y == 1)) / positives) if positives else None
    return oversell, fn


def checkout_threshold(p: np.ndarray, y: np.ndarray, allowed_false_negatives: int) -> float:
    """The highest t such that promising iff p >= t misses at most
    `allowed_false_negatives` of the positives in (p, y).

    The number of positives with p < t grows with t; it stays <= k up to and
    including the (k+1)-th smallest positive score, which is therefore the
    answer (1.0 if every positive may be missed)."""
    positives = np.sort(np.asarray(p, np.float64)[np.asarray(y) == 1])
    k = int(allowed_false_negatives)
    if k < 0:
        raise ValueError("allowed_false_negatives must be >= 0")
    if k >= positives.size:
        return 1.0
    return float(positives[k])


def decision_metrics(y, p_cal, rule, threshold) -> dict[str, float | None]:
    model = p_cal >= threshold
    baseline = rule == 1
    served = baseline & model
    out: dict[str, float | None] = {}
    for name, promise in (("model", model), ("baseline", baseline), ("served", served)):
        oversell, fn = rates(promise, y)
        out[f"oversell_rate_{name}"] = oversell
        out[f"false_negative_rate_{name}"] = fn
    return out


def group_metrics(y, p_cal, rule, threshold) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {
        "rows": int(y.size),
        "positives": int(np.sum(y)),
        "positive_rate": float(np.mean(y)) if y.size else None,
        "roc_auc": roc_auc(y, p_cal),
    }
    if y.size:
        out.update(decision_metrics(y, p_cal, rule, threshold))
    return out


def lag_bucket_masks(feed_lag_ratio: np.ndarray) -> dict[str, np.ndarray]:
    masks = {}
    for name, low, high in LAG_BUCKETS:
        mask = np.ones(feed_lag_ratio.shape, bool)
        if low is not None:
            mask &= feed_lag_ratio > low
        if high is not None:
            mask &= feed_lag_ratio <= high
        masks[name] = mask
    return masks


def reference_bins(values: np.ndarray) -> dict[str, list[float]]:
    """Decile cut points (observed values, deduplicated) and the fraction of
    `values` in each bin; bin = numpy.searchsorted(edges, v, side="left")."""
    values = np.asarray(values, np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9), method="lower"))
    index = np.searchsorted(edges, values, side="left")
    counts = np.bincount(index, minlength=edges.size + 1)
    fractions = counts / counts.sum()
    return {"edges": [float(e) for e in edges], "fractions": [float(f) for f in fractions]}

