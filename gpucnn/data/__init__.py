"""Datasets and batching.

``load_dataset(name, data_dir=None, download=True, progress=True) -> Dataset`` for
``"cifar10"`` (downloaded once into ``default_data_dir()``, verified, extracted) and
``"digits"`` (shipped inside the package; no download). ``BatchLoader`` serves normalized,
optionally augmented (``Augment``) batches from device memory; ``channel_stats`` gives the
per-channel mean/std used to normalize.
"""

from __future__ import annotations

import os

from gpucnn.data.augment import Augment
from gpucnn.data.cifar10 import load_cifar10
from gpucnn.data.dataset import Dataset, channel_stats, default_data_dir
from gpucnn.data.digits import load_digits
from gpucnn.data.loader import BatchLoader
from gpucnn.errors import DataError

DATASETS = ("cifar10", "digits")

__all__ = [
    "Augment", "BatchLoader", "DATASETS", "Dataset", "channel_stats", "default_data_dir", "load_dataset",
]


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load a dataset by name; DataError for an unknown name or a missing/corrupt dataset."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "cifar10":
        return load_cifar10(data_dir=data_dir, download=download, progress=progress)
    if key == "digits":
        return load_digits()
    raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
