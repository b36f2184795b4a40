"""Element-wise activations and inverted dropout on NumPy (any shape, dtype kept).

Backward functions take what the layer caches: the output y (ReLU, sigmoid, tanh),
the input x (softplus, GELU) or the dropout mask.
"""

from __future__ import annotations

import math

import numpy as np

_ERF_SERIES_TERMS = 80
_ERFC_FRACTION_TERMS = 120
_ERF_SWITCH = 2.0
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _erf_series(z: np.ndarray) -> np.ndarray:
    """erf(z) = 2/sqrt(pi) exp(-z^2) sum_n 2^n z^(2n+1) / (1*3*...*(2n+1)); all terms one sign."""
    term = z.copy()
    total = z.copy()
    z2 = 2.0 * z * z
    for n in range(1, _ERF_SERIES_TERMS):
        term *= z2 / (2 * n + 1)
        total += term
    return _TWO_OVER_SQRT_PI * np.exp(-z * z) * total


def _erfc_continued_fraction(z: np.ndarray) -> np.ndarray:
    """erfc(z) for z > 0: exp(-z^2)/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...))))."""
    t = z.copy()
    for n in range(_ERFC_FRACTION_TERMS, 0, -1):
        t = z + (0.5 * n) / t
    return _INV_SQRT_PI * np.exp(-z * z) / t


def erfc_np(x) -> np.ndarray:
    """Complementary error function, vectorized, float64, accurate to ~1e-15 relative."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    out = np.empty_like(a)
    small = a < _ERF_SWITCH
    out[small] = 1.0 - _erf_series(a[small])
    big = ~small
    out[big] = _erfc_continued_fraction(a[big])
    return np.where(x < 0, 2.0 - out, out)


def erf_np(x) -> np.ndarray:
    """Error function, vectorized, float64 (series below |x| = 2, continued fraction above)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    out = np.empty_like(a)
    small = a < _ERF_SWITCH
    out[small] = _erf_series(a[small])
    big = ~small
    out[big] = 1.0 - _erfc_continued_fraction(a[big])
    return np.copysign(out, x)


def normal_cdf(x) -> np.ndarray:
    """Phi(x) = 0.5 * erfc(-x / sqrt(2)), float64 (no cancellation in the left tail)."""
    return 0.5 * erfc_np(-np.asarray(x, dtype=np.float64) * _INV_SQRT_2)


def relu_forward(x):
    return np.maximum(x, x.dtype.type(0))


def relu_backward(dy, y):
    return dy * (y > 0)


def sigmoid_forward(x):
    """1 / (1 + exp(-x)) without overflow: exp(-|x|) is always <= 1."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_backward(dy, y):
    return dy * y * (1 - y)


def tanh_forward(x):
    return np.tanh(x)


def tanh_backward(dy, y):
    return dy * (1 - y * y)


def softplus_forward(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), stable for large |x|."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def softplus_backward(dy, x):
    return dy * sigmoid_forward(x)


def gelu_forward(x):
    """x * Phi(x) with the exact normal CDF."""
    return (x * normal_cdf(x)).astype(x.dtype, copy=False)


def gelu_backward(dy, x):
    """dy * (Phi(x) + x * phi(x))."""
    x64 = x.astype(np.float64, copy=False)
    grad = normal_cdf(x64) + x64 * _INV_SQRT_2PI * np.exp(-0.5 * x64 * x64)
    return (dy * grad).astype(dy.dtype, copy=False)


def silu_forward(x):
    """x * sigmoid(x) (SiLU, a.k.a. Swish)."""
    return (x * sigmoid_forward(x)).astype(x.dtype, copy=False)


def silu_backward(dy, x):
    """dy * s * (1 + x * (1 - s)) with s = sigmoid(x)."""
    s = sigmoid_forward(x)
    return (dy * s * (1 + x * (1 - s))).astype(dy.dtype, copy=False)


def lowbias32(x) -> np.ndarray:
    """Chris Wellons' lowbias32 integer hash on uint32 arrays (wraparound arithmetic)."""
    x = np.asarray(x, dtype=np.uint32).copy()
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def dropout_keep_uniform(size: int, seed: int) -> np.ndarray:
    """u in [0, 1) (float64, multiples of 2**-24) for flat indices 0..size-1 and a seed.

    h = lowbias32(lowbias32(i) ^ seed); u = (h >> 8) * 2**-24. Every backend computes
    the same u, so the same seed drops the same elements everywhere.
    """
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"dropout seed must be in [0, 2**32), got {seed}")
    index = np.arange(size, dtype=np.uint32)
    h = lowbias32(lowbias32(index) ^ np.uint32(seed))
    return (h >> np.uint32(8)).astype(np.float64) * 2.0**-24


def dropout_forward(x, p, seed):
    """(y, mask): mask holds 0 where u < p, else 1/(1 - p); y = x * mask."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    keep = dropout_keep_uniform(x.size, seed).reshape(x.shape) >= p
    mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy * mask
