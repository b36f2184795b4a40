"""Gradient clipping by the global L2 norm, as torch.nn.utils.clip_grad_norm_."""

from __future__ import annotations

import math

from gpucnn.checks import finite_number

_EPS = 1e-6  # torch's: keeps the scale finite when every gradient is zero


def clip_grad_norm(model, max_norm: float) -> float:
    """Scale the trainable params' grads in place so that their global L2 norm is <= max_norm.

    total = sqrt(sum over trainable params of sum(grad^2)) (frozen params are neither counted
    nor scaled); when ``max_norm / (total + 1e-6) < 1`` every counted grad is multiplied by it.
    Returns ``total`` (before clipping, a Python float). A non-finite total (a grad holding inf
    or nan) leaves the grads as they are, so the caller can see it and skip the step; torch
    would multiply them by nan or 0 instead.
    With several processes call it after the all-reduce, so that every rank clips alike.
    """
    max_norm = finite_number("clip_grad_norm", "max_norm", max_norm, 0.0, low_open=True)
    grads = [layer.grads[name] for _, layer, name in model.parameters() if layer.is_trainable(name)]
    if not grads:
        return 0.0
    xp = model.backend.xp
    # per-param norms on the device, then one host read: as torch, one sync per call
    norms = xp.stack([xp.linalg.norm(g.ravel()) for g in grads])
    total = float(xp.linalg.norm(norms))
    scale = max_norm / (total + _EPS)
    if math.isfinite(total) and scale < 1.0:
        for g in grads:
            g *= g.dtype.type(scale)
    return total
