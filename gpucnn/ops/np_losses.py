"""Softmax cross-entropy and mean squared error on NumPy.

logits (N, K), labels (N,) integers in [0, K). With label smoothing eps the target is
t = (1 - eps) * onehot + eps / K (as PyTorch); the loss is the batch mean of
-sum_k t_k log p_k, computed from log-softmax (log-sum-exp, no overflow).
"""

from __future__ import annotations

import numpy as np


def _targets(labels, k: int, label_smoothing: float, dtype) -> np.ndarray:
    t = np.full((labels.shape[0], k), label_smoothing / k, dtype=dtype)
    t[np.arange(labels.shape[0]), labels] += dtype.type(1.0 - label_smoothing)
    return t


def softmax_cross_entropy_forward(logits, labels, label_smoothing):
    """(loss 0-d, probs (N, K))."""
    n, k = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - lse
    probs = np.exp(log_probs)
    t = _targets(labels, k, label_smoothing, logits.dtype)
    loss = -(t * log_probs).sum() / n
    return np.asarray(loss, dtype=logits.dtype), probs


def softmax_cross_entropy_backward(probs, labels, label_smoothing):
    """dlogits (N, K) = (probs - t) / N."""
    n, k = probs.shape
    return (probs - _targets(labels, k, label_smoothing, probs.dtype)) / probs.dtype.type(n)


def mse_forward(pred, target):
    """Mean over all elements of (pred - target)**2, 0-d."""
    diff = pred - target
    return np.asarray(np.mean(diff * diff), dtype=pred.dtype)


def mse_backward(pred, target):
    """2 * (pred - target) / pred.size."""
    return (pred - target) * pred.dtype.type(2.0 / pred.size)
