"""Synchronized batch normalization: the batch statistics of the GLOBAL batch on every rank.

A ``SyncBatchNormStats`` is what a BatchNorm2D layer calls instead of its backend's
``batchnorm2d_forward`` / ``batchnorm2d_backward`` ops (``layer.stats_sync``), with the same
signatures. With it, N ranks compute exactly what one process computes on the global batch.

Forward (two all-reduces of C+1 and C values, two-pass like the NumPy op):
  m = sum_r N_r H W,  mean = sum x / m,  var = sum (x - mean)^2 / m,  y = (x - mean) invstd gamma + beta.
Backward: in one process, with g = dL/dy of the global mean loss L,
  dx = gamma invstd / m (m g - sum g - xhat sum g xhat).
Rank r receives g_r = dL_r/dy of ITS slice's mean loss L_r, and L = sum_r w_r L_r
(w_r = n_r / n, set per step in ``weight``). So the global sums are
G_beta = sum_r w_r sum g_r, G_gamma = sum_r w_r sum g_r xhat (one all-reduce of 2C values), and
rank r returns dx / w_r = gamma invstd / m (m g_r - G_beta / w_r - xhat G_gamma / w_r) and its local
dgamma, dbeta: both in the units of L_r, which the gradient all-reduce weights by w_r like
every other gradient.
"""

from __future__ import annotations

import numpy as np

_AXES = (0, 2, 3)


def _channel(v):
    return v.reshape(1, -1, 1, 1)


class SyncBatchNormStats:
    """Global-batch statistics over ``comm`` (an allreduce(array) communicator on the layer's device)."""

    def __init__(self, comm, xp) -> None:
        self.comm, self.xp = comm, xp
        self.weight = 1.0
        self._count = None

    def batchnorm2d_forward(self, x, gamma, beta, eps, running_mean=None, running_var=None, momentum=0.1,
                            activation=None):
        """(y, mean (C,), invstd (C,), var_unbiased (C,)) of the global batch; the running
        statistics, when given, are updated in place as the ops' batchnorm2d_forward does."""
        if activation is not None:
            raise ValueError("sync_batchnorm: a fused activation is not supported")
        xp = self.xp
        c = x.shape[1]
        local = xp.empty(c + 1, dtype=xp.float64)
        local[:c] = x.sum(axis=_AXES, dtype=xp.float64)
        local[c] = x.size // c
        total = self.comm.allreduce(local, "sum", "sync_batchnorm statistics")
        m = float(total[c])
        mean = (total[:c] / m).astype(x.dtype)
        centered = x - _channel(mean)
        squares = self.comm.allreduce((centered * centered).sum(axis=_AXES, dtype=xp.float64), "sum",
                                      "sync_batchnorm variance")
        var = (squares / m).astype(x.dtype)
        invstd = (1.0 / xp.sqrt(var + x.dtype.type(eps))).astype(x.dtype)
        y = centered * _channel(invstd * gamma) + _channel(beta)
        var_unbiased = var * x.dtype.type(m / (m - 1)) if m > 1 else xp.full_like(var, np.nan)
        self._count = m
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var_unbiased
        return y.astype(x.dtype, copy=False), mean, invstd, var_unbiased

    def batchnorm2d_backward(self, dy, x, gamma, mean, invstd, beta=None, activation=None):
        """(dx, dgamma, dbeta) in the units of this rank's slice-mean loss (see the module doc)."""
        if self._count is None:
            raise RuntimeError("SyncBatchNormStats: backward before a synchronized forward")
        xp, m, w = self.xp, self._count, float(self.weight)
        if w <= 0:
            raise RuntimeError("SyncBatchNormStats: backward of a rank with an empty slice")
        c = x.shape[1]
        xhat = (x - _channel(mean)) * _channel(invstd)
        dbeta = dy.sum(axis=_AXES)
        dgamma = (dy * xhat).sum(axis=_AXES)
        sums = xp.empty(2 * c, dtype=xp.float64)
        sums[:c] = dbeta
        sums[c:] = dgamma
        sums *= w
        sums = self.comm.allreduce(sums, "sum", "sync_batchnorm backward")
        g_beta = (sums[:c] / w).astype(x.dtype)
        g_gamma = (sums[c:] / w).astype(x.dtype)
        dx = _channel(gamma * invstd / x.dtype.type(m)) * (
            x.dtype.type(m) * dy - _channel(g_beta) - xhat * _channel(g_gamma))
        return dx.astype(x.dtype, copy=False), dgamma, dbeta
