"""Weight initializers, drawn on the host from a numpy Generator.

fan_in of a conv filter (O, C, KH, KW) is C*KH*KW; of a dense matrix (O, I) it is I.
"""

from __future__ import annotations

import math

import numpy as np

INIT_NAMES = ("he", "he_normal", "he_uniform", "fan_in_uniform", "dirac")


def fan_in(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:]))


def he_normal(shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Kaiming normal for ReLU: N(0, 2 / fan_in)."""
    std = math.sqrt(2.0 / fan_in(shape))
    return (rng.standard_normal(shape) * std).astype(dtype)


def he_uniform(shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Kaiming uniform for ReLU: U(-b, b) with b = sqrt(6 / fan_in)."""
    bound = math.sqrt(6.0 / fan_in(shape))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def fan_in_uniform(shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """PyTorch's default Conv2d/Linear init (kaiming_uniform with a=sqrt(5)): U(-b, b), b = 1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in(shape))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def dirac(shape, rng: np.random.Generator | None = None, dtype=np.float32) -> np.ndarray:
    """Partial identity conv filter (O, C, KH, KW), as airbench's ``dirac_(w[:C])``.

    The first k = min(O, C) filters are identities: W[i, i, KH//2, KW//2] = 1 and zero
    elsewhere (``torch.nn.init.dirac_`` on ``W[:C]``). The remaining O - k filters keep
    PyTorch's default ``fan_in_uniform`` draw (zeros when ``rng`` is None).
    """
    if len(shape) != 4:
        raise ValueError(f"dirac init needs a 4-d conv filter shape (O, C, KH, KW), got {tuple(shape)}")
    shape = tuple(int(s) for s in shape)
    w = fan_in_uniform(shape, rng, np.float64) if rng is not None else np.zeros(shape)
    k = min(shape[0], shape[1])
    w[:k] = 0.0
    w[np.arange(k), np.arange(k), shape[2] // 2, shape[3] // 2] = 1.0
    return w.astype(dtype)


def initialize(name: str, shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Draw a weight of ``shape`` by initializer name (one of INIT_NAMES)."""
    if name in ("he", "he_normal"):
        return he_normal(shape, rng, dtype)
    if name == "he_uniform":
        return he_uniform(shape, rng, dtype)
    if name == "fan_in_uniform":
        return fan_in_uniform(shape, rng, dtype)
    if name == "dirac":
        return dirac(shape, rng, dtype)
    raise ValueError(f"unknown init {name!r}; expected one of {', '.join(INIT_NAMES)}")
