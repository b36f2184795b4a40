"""A fixed, seeded, class-stratified validation split of a training set.

Rounding rule: a class with ``n`` images gives ``k = floor(fraction * n + 0.5)`` of them
(round half up) to validation, then at least 1 when ``fraction > 0`` and ``n >= 2``, and at
most ``n - 1``, so every class keeps a training image. Which images: a permutation from
``np.random.default_rng(seed)`` drawn class by class in label order, so the same labels and
seed give the same indices on every machine, independent of global random state.
"""

from __future__ import annotations

import math

import numpy as np


def class_holdout_count(count: int, fraction: float) -> int:
    """How many of a class's ``count`` images the rounding rule above sends to validation."""
    if count < 2 or fraction <= 0:
        return 0
    k = math.floor(fraction * count + 0.5)
    return min(max(k, 1), count - 1)


def check_fraction(fraction) -> float:
    """``fraction`` as a float in [0, 1); ValueError otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"validation_split: fraction must be a number in [0, 1), got {fraction!r}")
    return float(fraction)


def validation_split(y, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): disjoint, sorted int64 index arrays covering ``range(len(y))``.

    y: (N,) integer labels; fraction: in [0, 1), the share of each class held out;
    seed: the split's seed. ValueError for a bad ``y`` or ``fraction``.
    """
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise ValueError(f"validation_split: y must be (N,) integer labels, got {y.shape} {y.dtype}")
    fraction = check_fraction(fraction)
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        k = class_holdout_count(members.size, fraction)
        if k:
            held.append(members[rng.permutation(members.size)[:k]])
    val_idx = np.sort(np.concatenate(held)).astype(np.int64) if held else np.zeros(0, np.int64)
    mask = np.ones(y.size, bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx
