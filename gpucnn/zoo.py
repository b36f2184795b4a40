"""Ready-made models."""

from __future__ import annotations

import numpy as np

from gpucnn import layers
from gpucnn.layers.base import as_rng
from gpucnn.model import Sequential


def lenet5(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, rng=None, dtype=np.float32) -> Sequential:
    """LeNet-5: conv5x5 C->6, ReLU, maxpool2, conv5x5 6->16, ReLU, maxpool2, Flatten,
    Dense->120, ReLU, Dense 120->84, ReLU, Dense 84->num_classes."""
    rng = as_rng(rng)
    side = ((image_size - 4) // 2 - 4) // 2
    if image_size < 16 or side < 1:
        raise ValueError(f"lenet5: image_size must be at least 16, got {image_size}")
    return Sequential(
        [
            layers.Conv2D(in_channels, 6, 5, dtype=dtype, rng=rng),
            layers.ReLU(),
            layers.MaxPool2D(2),
            layers.Conv2D(6, 16, 5, dtype=dtype, rng=rng),
            layers.ReLU(),
            layers.MaxPool2D(2),
            layers.Flatten(),
            layers.Dense(16 * side * side, 120, dtype=dtype, rng=rng),
            layers.ReLU(),
            layers.Dense(120, 84, dtype=dtype, rng=rng),
            layers.ReLU(),
            layers.Dense(84, num_classes, dtype=dtype, rng=rng),
        ]
    )
