"""The Dataset container, the cache directory it is downloaded into, and channel statistics."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "GPUCNN_DATA_DIR"


@dataclass
class Dataset:
    """An image-classification dataset held on the host.

    x_train: (N, C, H, W) uint8, y_train: (N,) int64 in [0, len(classes)),
    x_test: (M, C, H, W) uint8, y_test: (M,) int64, classes: class names by label;
    x_val: (V, C, H, W) uint8 and y_val: (V,) int64, the validation set, or both None when
    there is none (see ``with_validation``); notes: one-line remarks made while loading
    (e.g. how many unreadable images were skipped) for the caller to print.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.x_val is None) != (self.y_val is None):
            raise ValueError(f"dataset {self.name!r}: x_val and y_val must both be arrays or both None")
        splits = [("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)]
        if self.x_val is not None:
            splits.append(("val", self.x_val, self.y_val))
        for split, x, y in splits:
            if x.dtype != np.uint8 or x.ndim != 4:
                raise ValueError(f"dataset {self.name!r}: x_{split} must be (N, C, H, W) uint8, "
                                 f"got {x.shape} {x.dtype}")
            if y.shape != (x.shape[0],):
                raise ValueError(f"dataset {self.name!r}: y_{split} must have shape ({x.shape[0]},), got {y.shape}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"dataset {self.name!r}: train images {self.x_train.shape[1:]} and test images "
                             f"{self.x_test.shape[1:]} differ in shape")
        if self.x_val is not None and self.x_val.shape[1:] != self.x_train.shape[1:]:
            raise ValueError(f"dataset {self.name!r}: train images {self.x_train.shape[1:]} and validation images "
                             f"{self.x_val.shape[1:]} differ in shape")

    @property
    def has_validation(self) -> bool:
        return self.x_val is not None

    def with_validation(self, fraction: float, seed: int = 0) -> "Dataset":
        """This dataset with a validation set: the shipped one if it has one, else a held-out part of train.

        fraction: the share of each class moved from train to (x_val, y_val), rounded as
        ``gpucnn.data.split`` says; 0 returns the dataset unchanged. seed: the split's seed.
        The result is a new Dataset; this one is not modified.
        """
        from gpucnn.data.split import check_fraction, validation_split

        check_fraction(fraction)
        if self.has_validation:
            return self
        train_idx, val_idx = validation_split(self.y_train, fraction, seed)
        if val_idx.size == 0:
            return self
        return dataclasses.replace(
            self, x_train=self.x_train[train_idx], y_train=self.y_train[train_idx],
            x_val=self.x_train[val_idx], y_val=self.y_train[val_idx], notes=list(self.notes),
        )

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
