"""Platt scaling, exactly as the server applies it.

Given p, the ONNX probability of label 1 (float32, read as float64):

    z     = ln(p / (1 - p)),  p clamped to [1e-7, 1 - 1e-7]
    p_cal = 1 / (1 + exp(-(a * z + b)))

All arithmetic is float64. The parameters are fitted by maximum likelihood on
the calibration split (Newton's method on the two-parameter logistic
regression of the label on z), deterministically and without regularisation.
"""

from __future__ import annotations

import numpy as np

P_MIN = 1e-7
P_MAX = 1.0 - 1e-7


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), P_MIN, P_MAX)
    return np.log(p / (1.0 - p))


def apply(p: np.ndarray, a: float, b: float) -> np.ndarray:
    z = logit(p)
    return 1.0 / (1.0 + np.exp(-(a * z + b)))


def _loss(z: np.ndarray, y: np.ndarray, a: float, b: float) -> float:
    s = a * z + b
    # log(1 + exp(s)) - y * s, stable for large |s|
    return float(np.sum(np.logaddexp(0.0, s) - y * s))


def fit(p: np.ndarray, y: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """Returns (a, b) minimising the log loss of apply(p, a, b) against y."""
    z = logit(p)
    y = np.asarray(y, dtype=np.float64)
    if z.shape != y.shape or z.size == 0:
        raise ValueError("calibration needs as many labels as scores, and at least one")
    if y.min() == y.max():
        raise ValueError("calibration needs both labels in the calibration split")
    a, b = 1.0, 0.0
    loss = _loss(z, y, a, b)
    for _ in range(iterations):
        q = 1.0 / (1.0 + np.exp(-(a * z + b)))
        r = q - y
        w = q * (1.0 - q)
        grad = np.array([np.dot(r, z), np.sum(r)])
        hess = np.array([[np.dot(w, z * z), np.dot(w, z)], [np.dot(w, z), np.sum(w)]])
        hess += np.eye(2) * 1e-9 * max(1.0, np.trace(hess))
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8:
            a_new, b_new = a - scale * step[0], b - scale * step[1]
            new_loss = _loss(z, y, a_new, b_new)
            if new_loss <= loss:
                break
            scale /= 2.0
        else:
            break
        converged = abs(loss - new_loss) <= 1e-12 * max(1.0, abs(loss))
        a, b, loss = a_new, b_new, new_loss
        if converged:
            break
    return float(a), float(b)
