"""Element-wise activations and inverted dropout on NumPy (any shape, dtype kept).

Backward functions take what the layer caches: the output y (ReLU, sigmoid, tanh),
the input x (softplus, GELU) or the dropout mask.

Each op is a handful of whole-array NumPy passes, most of them in place. The normal CDF
(GELU), erf/erfc and the logistic function use scipy.special's compiled ufuncs when scipy
imports (ndtr, erf, erfc, expit); scipy is optional: without it erf/erfc come from Cody's
rational approximations in vectorized NumPy (float64, a few ulp; ``erf_cody``/``erfc_cody``).
float32 inputs are evaluated in float64 inside those functions and rounded once.
"""

from __future__ import annotations

import math

import numpy as np

try:  # optional: one compiled pass per special function; the pure-NumPy forms below stand in
    from scipy import special as _special
except ImportError:  # pragma: no cover - exercised by forcing _special = None in the tests
    _special = None

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)

# W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23
# (1969) 631-638, as in his SPECFUN routine CALERF (public domain): near-minimax rational
# forms with >= 18 significant digits in theory, so the result is limited by double rounding.
_CODY_SMALL = 0.46875  # erf(x) = x * R(x^2) below, erfc from the other two forms above
_CODY_MID = 4.0
_CODY_UNDERFLOW = 30.0  # erfc(30) ~ 3e-393 is 0 in double: clipping there changes nothing
_CODY_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02, 3.20937758913846947e03,
           1.85777706184603153e-1)
_CODY_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
_CODY_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01, 2.98635138197400131e02,
           8.81952221241769090e02, 1.71204761263407058e03, 2.05107837782607147e03, 1.23033935479799725e03,
           2.15311535474403846e-8)
_CODY_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02, 1.62138957456669019e03,
           3.29079923573345963e03, 4.36261909014324716e03, 3.43936767414372164e03, 1.23033935480374942e03)
_CODY_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1, 1.60837851487422766e-2,
           6.58749161529837803e-4, 1.63153871373020978e-2)
_CODY_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1, 6.05183413124413191e-2,
           2.33520497626869185e-3)


def _rational(t, num, den, n_loop):
    """CALERF's Horner form: num[-1]*t^(n+1) + ... over t^(n+1) + ..., both finished by the caller."""
    xnum = num[-1] * t
    xden = t.copy()
    for i in range(n_loop):
        xnum += num[i]
        xnum *= t
        xden += den[i]
        xden *= t
    return xnum, xden


def _erf_small(x):
    """erf(x) for |x| <= 0.46875 (float64), full relative precision down to subnormals."""
    t = x * x
    xnum, xden = _rational(t, _CODY_A, _CODY_B, 3)
    xnum += _CODY_A[3]
    xden += _CODY_B[3]
    return x * xnum / xden


def _erfc_large(y):
    """erfc(y) for y > 0.46875 (float64), relative precision kept in the tail."""
    y = np.minimum(y, _CODY_UNDERFLOW)
    out = np.empty_like(y)
    mid = y <= _CODY_MID
    ym = y[mid]
    xnum, xden = _rational(ym, _CODY_C, _CODY_D, 7)
    out[mid] = (xnum + _CODY_C[7]) / (xden + _CODY_D[7])
    yt = y[~mid]
    t = 1.0 / (yt * yt)
    xnum, xden = _rational(t, _CODY_P, _CODY_Q, 4)
    out[~mid] = (_INV_SQRT_PI - t * (xnum + _CODY_P[4]) / (xden + _CODY_Q[4])) / yt
    # exp(-y^2) as exp(-s^2) * exp(-(y-s)(y+s)) with s = y rounded down to 1/16: s^2 is exact,
    # so the rounding of y*y does not turn into a relative error of y^2 * 1e-16 in the tail
    s = np.trunc(y * 16.0) / 16.0
    out *= np.exp(-s * s)
    out *= np.exp(-(y - s) * (y + s))
    return out


def erf_cody(x) -> np.ndarray:
    """erf in pure NumPy (float64) from Cody's rational approximations: a few ulp everywhere."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    out = np.empty_like(a)
    small = a <= _CODY_SMALL
    out[small] = _erf_small(x[small])
    big = ~small
    out[big] = np.copysign(1.0 - _erfc_large(a[big]), x[big])
    return out


def erfc_cody(x) -> np.ndarray:
    """erfc in pure NumPy (float64) from Cody's rational approximations, relative precision in the tail."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    out = np.empty_like(a)
    small = a <= _CODY_SMALL
    out[small] = 1.0 - _erf_small(x[small])
    big = ~small
    tail = _erfc_large(a[big])
    out[big] = np.where(x[big] < 0, 2.0 - tail, tail)
    return out


def erf_np(x) -> np.ndarray:
    """Error function, vectorized, float64: scipy.special.erf when scipy imports, else erf_cody."""
    x = np.asarray(x, dtype=np.float64)
    return _special.erf(x) if _special is not None else erf_cody(x)


def erfc_np(x) -> np.ndarray:
    """Complementary error function, vectorized, float64, accurate to ~1e-15 relative."""
    x = np.asarray(x, dtype=np.float64)
    return _special.erfc(x) if _special is not None else erfc_cody(x)


def normal_cdf(x) -> np.ndarray:
    """Phi(x) = 0.5 * erfc(-x / sqrt(2)), float64 (no cancellation in the left tail)."""
    return _normal_cdf(np.asarray(x, dtype=np.float64))


def _normal_cdf(x):
    """Phi(x) in x's float dtype (float32 inputs are evaluated in float64 and rounded once)."""
    if _special is not None:
        return _special.ndtr(x)
    out = erfc_cody(x.astype(np.float64, copy=False) * -_INV_SQRT_2)
    out *= 0.5
    return out.astype(x.dtype, copy=False)


def _sigmoid(x):
    """1 / (1 + exp(-x)) in x's dtype without overflow."""
    if _special is not None:
        return _special.expit(x)
    e = np.abs(x)
    np.negative(e, out=e)
    np.exp(e, out=e)  # exp(-|x|) <= 1: never overflows
    out = e + 1
    np.reciprocal(out, out=out)
    np.multiply(out, e, out=out, where=x < 0)  # e / (1 + e) on the negative side
    return out


def relu_forward(x):
    return np.maximum(x, x.dtype.type(0))


def relu_backward(dy, y):
    return dy * (y > 0)


def sigmoid_forward(x):
    """1 / (1 + exp(-x)), stable for large |x| (scipy's expit when available)."""
    return _sigmoid(x)


def sigmoid_backward(dy, y):
    out = 1 - y
    out *= y
    out *= dy
    return out


def tanh_forward(x):
    return np.tanh(x)


def tanh_backward(dy, y):
    out = y * y
    np.subtract(1, out, out=out)
    out *= dy
    return out


def softplus_forward(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), stable for large |x| (np.logaddexp is 4x slower)."""
    out = np.abs(x)
    np.negative(out, out=out)
    np.exp(out, out=out)
    np.log1p(out, out=out)
    out += np.maximum(x, x.dtype.type(0))
    return out


def softplus_backward(dy, x):
    out = _sigmoid(x)
    out *= dy
    return out


def gelu_forward(x):
    """x * Phi(x) with the exact normal CDF, in x's dtype (two passes with scipy)."""
    out = _normal_cdf(x)
    out *= x
    return out


def gelu_backward(dy, x):
    """dy * (Phi(x) + x * phi(x)), in dy's dtype."""
    out = _normal_cdf(x)
    pdf = x * x
    pdf *= -0.5
    np.exp(pdf, out=pdf)
    pdf *= x
    pdf *= _INV_SQRT_2PI
    out += pdf
    out *= dy
    return out.astype(dy.dtype, copy=False)


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
    """(y, mask): mask holds 0 where u < p, else 1/(1 - p); y = x * mask.

    ``seed``: an int, or a 1-element uint32 array holding it (read on the host here)."""
    if hasattr(seed, "shape"):
        seed = int(np.asarray(seed).reshape(-1)[0])
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    keep = dropout_keep_uniform(x.size, seed).reshape(x.shape) >= p
    mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy * mask
