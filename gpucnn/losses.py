"""Losses: forward(pred, target) -> 0-d backend array; backward() -> dpred."""

from __future__ import annotations

import numpy as np

from gpucnn.backend import get_backend


def _check_not_empty(owner: str, count: int) -> None:
    """A mean over no samples is undefined (0/0): refuse it instead of returning NaN."""
    if count == 0:
        raise ValueError(f"{owner}: the loss of an empty batch (N = 0) is a mean over no samples, which is "
                         f"undefined; skip empty batches before the loss")


class SoftmaxCrossEntropy:
    """Mean over the batch of -sum_k t_k log softmax(logits)_k, t = (1-eps)*onehot + eps/K.

    logits (N, K) float, labels (N,) integers in [0, K). Gradient: (softmax - t) / N.
    Labels in host memory are range-checked (ValueError); labels already on a GPU are not,
    since that check would stall the device every batch: there the kernel makes the loss
    NaN for an out-of-range label, which the trainer reports.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"SoftmaxCrossEntropy: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.backend = get_backend()
        self._cache = None

    def forward(self, logits, labels):
        xp = self.backend.xp
        if logits.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy: expected logits of shape (N, K), got {tuple(logits.shape)}")
        if np.dtype(logits.dtype).kind != "f":
            raise ValueError(f"SoftmaxCrossEntropy: logits must be float, got {np.dtype(logits.dtype).name}")
        n, k = logits.shape
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"SoftmaxCrossEntropy: expected labels of shape ({n},), got {tuple(labels.shape)}")
        if np.dtype(labels.dtype).kind not in "iu":
            raise ValueError(f"SoftmaxCrossEntropy: labels must be integers, got {np.dtype(labels.dtype).name}")
        _check_not_empty("SoftmaxCrossEntropy", n)
        if n and isinstance(labels, np.ndarray) and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(
                f"SoftmaxCrossEntropy: labels must be in [0, {k}), got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        labels = labels.astype(xp.int32, copy=False) if self.backend.kernels else labels
        loss, probs = self.backend.ops.softmax_cross_entropy_forward(logits, labels, self.label_smoothing)
        self._cache = (probs, labels)
        return loss

    def backward(self):
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy: backward called before forward")
        probs, labels = self._cache
        return self.backend.ops.softmax_cross_entropy_backward(probs, labels, self.label_smoothing)


class MeanSquaredError:
    """Mean over all elements of (pred - target)**2; gradient 2*(pred - target)/pred.size."""

    def __init__(self) -> None:
        self.backend = get_backend()
        self._cache = None

    def forward(self, pred, target):
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(
                f"MeanSquaredError: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
            )
        _check_not_empty("MeanSquaredError", int(np.prod(pred.shape)))
        target = target.astype(pred.dtype, copy=False)
        self._cache = (pred, target)
        return self.backend.ops.mse_forward(pred, target)

    def backward(self):
        if self._cache is None:
            raise RuntimeError("MeanSquaredError: backward called before forward")
        return self.backend.ops.mse_backward(*self._cache)
