"""Batch normalization over (N, H, W) per channel on NumPy. x (N, C, H, W), gamma/beta (C,)."""

from __future__ import annotations

import numpy as np

_AXES = (0, 2, 3)


def _per_channel(v):
    return v.reshape(1, -1, 1, 1)


def batchnorm2d_forward(x, gamma, beta, eps):
    """(y, mean (C,), invstd (C,), var_unbiased (C,)) from the batch statistics."""
    m = x.size // x.shape[1]
    mean = x.mean(axis=_AXES)
    centered = x - _per_channel(mean)
    var = (centered * centered).mean(axis=_AXES)
    invstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
    y = centered * _per_channel(invstd * gamma) + _per_channel(beta)
    var_unbiased = var * x.dtype.type(m / (m - 1)) if m > 1 else np.full_like(var, np.nan)
    return y, mean, invstd, var_unbiased


def batchnorm2d_inference(x, gamma, beta, running_mean, running_var, eps):
    """y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta."""
    scale = gamma / np.sqrt(running_var + x.dtype.type(eps))
    shift = beta - running_mean * scale
    return x * _per_channel(scale.astype(x.dtype)) + _per_channel(shift.astype(x.dtype))


def batchnorm2d_backward(dy, x, gamma, mean, invstd):
    """(dx, dgamma, dbeta) for training-mode batch normalization."""
    m = x.size // x.shape[1]
    xhat = (x - _per_channel(mean)) * _per_channel(invstd)
    dbeta = dy.sum(axis=_AXES)
    dgamma = (dy * xhat).sum(axis=_AXES)
    dx = _per_channel(gamma * invstd / m) * (
        m * dy - _per_channel(dbeta) - xhat * _per_channel(dgamma)
    )
    return dx, dgamma, dbeta
