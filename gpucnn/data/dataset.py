"""The Dataset container, the cache directory it is downloaded into, and channel statistics."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "GPUCNN_DATA_DIR"


@dataclass
class Dataset:
    """An image-classification dataset held on the host.

    x_train: (N, C, H, W) uint8, y_train: (N,) int64 in [0, len(classes)),
    x_test: (M, C, H, W) uint8, y_test: (M,) int64, classes: class names by label.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != np.uint8 or x.ndim != 4:
                raise ValueError(f"dataset {self.name!r}: x_{split} must be (N, C, H, W) uint8, "
                                 f"got {x.shape} {x.dtype}")
            if y.shape != (x.shape[0],):
                raise ValueError(f"dataset {self.name!r}: y_{split} must have shape ({x.shape[0]},), got {y.shape}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"dataset {self.name!r}: train images {self.x_train.shape[1:]} and test images "
                             f"{self.x_test.shape[1:]} differ in shape")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])


def default_data_dir() -> Path:
    """Where datasets are cached: $GPUCNN_DATA_DIR, else $XDG_CACHE_HOME/gpucnn, else ~/.cache/gpucnn."""
    explicit = os.environ.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gpucnn"


def channel_stats(x_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of uint8 images (N, C, H, W), in [0, 1] units.

    Computed exactly from a 256-bin histogram per channel (float64), so it needs no float
    copy of the images. Returns (mean (C,), std (C,)) as float64.
    """
    x = np.asarray(x_uint8)
    if x.dtype != np.uint8 or x.ndim != 4 or x.size == 0:
        raise ValueError(f"channel_stats: expected non-empty (N, C, H, W) uint8 images, got {x.shape} {x.dtype}")
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(x.shape[1]):  # a handful of channels, each one vectorized
        counts = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = (counts @ values) / total
        var = (counts @ (values - mean) ** 2) / total
        means.append(mean / 255.0)
        stds.append(np.sqrt(var) / 255.0)
    return np.array(means), np.array(stds)
