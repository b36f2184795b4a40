"""Evaluation: mean loss, accuracy and confusion matrix of a model over a loader."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpucnn.metrics import confusion_matrix
from gpucnn.tta import predict_tta


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    confusion: np.ndarray  # (K, K) int64, rows = true class


def evaluate_model(model, loss_fn, loader, num_classes: int, tta: bool | int = False) -> EvalResult:
    """Mean loss, accuracy and confusion matrix over every batch of ``loader`` (evaluation mode).

    ``tta``: False/0 none, True/1 mirror, 2 mirror + translate (``gpucnn.tta.predict_tta`` levels).
    Sums stay on the device until the end: one host read per evaluation.
    """
    backend = loader.backend
    xp = backend.xp
    loss_sum = xp.zeros((), dtype=xp.float64)
    confusion = xp.zeros((num_classes, num_classes), dtype=xp.int64)
    samples = 0
    for x, y in loader:
        logits = predict_tta(model, x, batch_size=x.shape[0], level=int(tta)) if tta else model.forward(x, training=False)
        batch_loss = loss_fn.forward(logits, y)
        pred = xp.argmax(logits, axis=1)
        loss_sum = loss_sum + batch_loss.astype(xp.float64) * y.shape[0]
        confusion = confusion + confusion_matrix(y, pred, num_classes, xp)
        samples += int(y.shape[0])
    host_confusion = backend.to_host(confusion).astype(np.int64)
    return EvalResult(float(loss_sum) / samples, float(np.trace(host_confusion)) / samples, host_confusion)
