"""Datasets and batching.

``load_dataset(name, data_dir=None, download=True, progress=True, **options) -> Dataset``
for every name in ``DATASETS`` (the registry in ``gpucnn.data.registry`` owns the names,
their loaders, options and facts): ``"cifar10"``, ``"cifar100"``, ``"mnist"``,
``"fashion-mnist"`` (downloaded once into ``default_data_dir()``, verified, extracted, or
found there as a local copy), ``"digits"`` (shipped inside the package; no download) and
``"folder"`` (your own images). ``Dataset.with_validation`` holds out a seeded,
class-stratified validation set; ``cached_datasets`` lists what is on disk.
``BatchLoader`` serves normalized, optionally augmented (``Augment``) batches from device
memory; ``channel_stats`` gives the per-channel mean/std used to normalize.
"""

from __future__ import annotations

from gpucnn.data.augment import Augment
from gpucnn.data.dataset import Dataset, channel_stats, default_data_dir
from gpucnn.data.loader import BatchLoader
from gpucnn.data.registry import DATASET_SPECS, DATASETS, DatasetSpec, cached_datasets, load_dataset
from gpucnn.data.split import validation_split

__all__ = [
    "Augment", "BatchLoader", "DATASETS", "DATASET_SPECS", "Dataset", "DatasetSpec", "cached_datasets",
    "channel_stats", "default_data_dir", "load_dataset", "validation_split",
]
