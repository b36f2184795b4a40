"""Batch normalization over (N, H, W) per channel on NumPy. x (N, C, H, W), gamma/beta (C,).

Optionally fused with the activation that follows (``activation``: None or a name in
``BN_FUSED_ACTIVATIONS``): y = act(xhat * gamma + beta), and backward takes dy of act's output.
"""

from __future__ import annotations

import numpy as np

from gpucnn.ops import BN_FUSED_ACTIVATIONS, fused_activation_code
from gpucnn.ops.np_activations import gelu_backward, gelu_forward, relu_backward, relu_forward

_AXES = (0, 2, 3)


def bn_activation_code(op: str, activation) -> int:
    """0 for None, else 1 + the index of ``activation`` in BN_FUSED_ACTIVATIONS."""
    return fused_activation_code(op, activation, BN_FUSED_ACTIVATIONS)


def _per_channel(v):
    return v.reshape(1, -1, 1, 1)


def _activate(z, activation):
    if activation == "relu":
        return relu_forward(z)
    if activation == "gelu":
        return gelu_forward(z)
    return z


def _activation_grad(dy, z, activation):
    # The activation layers' own backward ops, so a fused BatchNorm2D + activation computes
    # exactly (bit for bit) what the two layers compute apart. relu_backward(dy, y) masks
    # with y > 0, and z > 0 exactly where relu(z) > 0, so z stands in for the output.
    if activation == "relu":
        return relu_backward(dy, z)
    if activation == "gelu":
        return gelu_backward(dy, z)
    return dy


def batchnorm2d_forward(x, gamma, beta, eps, running_mean=None, running_var=None, momentum=0.1, activation=None):
    """(y, mean (C,), invstd (C,), var_unbiased (C,)) from the batch statistics.

    With running_mean/running_var (C,) given, both are updated in place as PyTorch does:
    running = (1 - momentum) * running + momentum * batch (unbiased batch variance).
    """
    bn_activation_code("batchnorm2d_forward", activation)
    if (running_mean is None) != (running_var is None):
        raise ValueError("batchnorm2d_forward: running_mean and running_var go together; got only one")
    m = x.size // x.shape[1]
    mean = x.mean(axis=_AXES)
    centered = x - _per_channel(mean)
    var = (centered * centered).mean(axis=_AXES)
    invstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
    y = _activate(centered * _per_channel(invstd * gamma) + _per_channel(beta), activation)
    var_unbiased = var * x.dtype.type(m / (m - 1)) if m > 1 else np.full_like(var, np.nan)
    if running_mean is not None:
        running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        running_var[...] = (1 - momentum) * running_var + momentum * var_unbiased
    return y, mean, invstd, var_unbiased


def batchnorm2d_inference(x, gamma, beta, running_mean, running_var, eps, activation=None):
    """y = act((x - running_mean) / sqrt(running_var + eps) * gamma + beta)."""
    bn_activation_code("batchnorm2d_inference", activation)
    scale = gamma / np.sqrt(running_var + x.dtype.type(eps))
    shift = beta - running_mean * scale
    return _activate(x * _per_channel(scale.astype(x.dtype)) + _per_channel(shift.astype(x.dtype)), activation)


def batchnorm2d_backward(dy, x, gamma, mean, invstd, beta=None, activation=None):
    """(dx, dgamma, dbeta) for training-mode batch normalization.

    With a fused ``activation``, dy is the gradient of act's output and ``beta`` is needed
    to recompute act's input z = xhat * gamma + beta.
    """
    if bn_activation_code("batchnorm2d_backward", activation) and beta is None:
        raise ValueError(f"batchnorm2d_backward: activation {activation!r} needs beta (to recompute its input)")
    m = x.size // x.shape[1]
    centered = x - _per_channel(mean)
    xhat = centered * _per_channel(invstd)
    if activation is not None:
        # act's input recomputed in the forward's order of operations, bit for bit the z it saw
        z = centered * _per_channel(invstd * gamma) + _per_channel(beta)
        dy = _activation_grad(dy, z, activation)
    dbeta = dy.sum(axis=_AXES)
    dgamma = (dy * xhat).sum(axis=_AXES)
    dx = _per_channel(gamma * invstd / m) * (
        m * dy - _per_channel(dbeta) - xhat * _per_channel(dgamma)
    )
    return dx, dgamma, dbeta
