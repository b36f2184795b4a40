"""Weight initializers, drawn on the host from a numpy Generator.

fan_in of a conv filter (O, C, KH, KW) is C*KH*KW; of a dense matrix (O, I) it is I.
"""

from __future__ import annotations

import math

import numpy as np

INIT_NAMES = ("he", "he_normal", "he_uniform", "dirac")


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


def dirac(shape, dtype=np.float32) -> np.ndarray:
    """Identity conv filter (O, C, KH, KW): W[i, i, KH//2, KW//2] = 1 for i < min(O, C)."""
    if len(shape) != 4:
        raise ValueError(f"dirac init needs a 4-d conv filter shape, got {tuple(shape)}")
    w = np.zeros(shape, dtype=dtype)
    k = min(shape[0], shape[1])
    w[np.arange(k), np.arange(k), shape[2] // 2, shape[3] // 2] = 1
    return w


def initialize(name: str, shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Draw a weight of ``shape`` by initializer name (one of INIT_NAMES)."""
    if name in ("he", "he_normal"):
        return he_normal(shape, rng, dtype)
    if name == "he_uniform":
        return he_uniform(shape, rng, dtype)
    if name == "dirac":
        return dirac(shape, dtype)
    raise ValueError(f"unknown init {name!r}; expected one of {', '.join(INIT_NAMES)}")
