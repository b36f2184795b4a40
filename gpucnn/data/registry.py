"""The one owner of dataset names: each name's loader, options and facts.

``DATASETS`` (the names), ``DATASET_SPECS`` (name -> DatasetSpec), ``load_dataset`` (by
name, with per-dataset options) and ``cached_datasets`` (what is on disk, for
``gpucnn info --data``) all read the table at the bottom of this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gpucnn.data import cifar10, cifar100, folder, mnist
from gpucnn.data.dataset import Dataset
from gpucnn.data.digits import DIGITS_FILE, load_digits
from gpucnn.data.files import resolve_root
from gpucnn.errors import DataError


@dataclass(frozen=True)
class DatasetSpec:
    """What gpucnn knows about a dataset before loading it.

    loader(data_dir, download, progress, **options) -> Dataset; options: name -> default
    of the options that dataset takes (``load_dataset(..., **options)``); image_shape /
    num_classes: (C, H, W) and class count, None when the options decide; has_validation:
    it ships its own validation split; needs_download: it is fetched from the network
    unless a local copy is found; local: the folders/files under the data directory it is
    read from or downloaded to.
    """

    name: str
    description: str
    loader: Callable[..., Dataset]
    options: dict = field(default_factory=dict)
    image_shape: tuple | None = None
    num_classes: int | None = None
    has_validation: bool = False
    needs_download: bool = True
    local: tuple[str, ...] = ()


def _cifar10(data_dir, download, progress):
    return cifar10.load_cifar10(data_dir=data_dir, download=download, progress=progress)


def _cifar100(data_dir, download, progress, label_mode="fine"):
    return cifar100.load_cifar100(data_dir=data_dir, download=download, progress=progress, label_mode=label_mode)


def _idx(variant):
    def load(data_dir, download, progress):
        return mnist.load_idx_dataset(variant, data_dir=data_dir, download=download, progress=progress)
    return load


def _digits(data_dir, download, progress):
    return load_digits()


def _folder(data_dir, download, progress, path=None, image_size=32, skip_bad_images=False):
    return folder.load_folder(path, image_size=image_size, skip_bad_images=skip_bad_images, data_dir=data_dir,
                              progress=progress)


SPECS = (
    DatasetSpec("cifar10", "CIFAR-10: 50000/10000 colour 32x32 images, 10 classes", _cifar10,
                image_shape=(3, 32, 32), num_classes=10,
                local=(cifar10.FOLDER, cifar10.PICKLE_FOLDER, cifar10.ARCHIVE_NAME)),
    DatasetSpec("cifar100", "CIFAR-100: 50000/10000 colour 32x32 images, 100 classes (20 with label_mode=coarse)",
                _cifar100, options={"label_mode": "fine"}, image_shape=(3, 32, 32),
                local=(cifar100.FOLDER, cifar100.ARCHIVE_NAME)),
    DatasetSpec("mnist", "MNIST: 60000/10000 grey 28x28 handwritten digits", _idx("mnist"),
                image_shape=(1, 28, 28), num_classes=10, local=mnist.MNIST.folders),
    DatasetSpec("fashion-mnist", "Fashion-MNIST: 60000/10000 grey 28x28 clothing images, 10 classes",
                _idx("fashion-mnist"), image_shape=(1, 28, 28), num_classes=10, local=mnist.FASHION_MNIST.folders),
    DatasetSpec("digits", "digits: 1797 handwritten 8x8 digits shipped with gpucnn, shown as 3x32x32", _digits,
                image_shape=(3, 32, 32), num_classes=10, needs_download=False),
    DatasetSpec("folder", "your images: path=DIR with train/ and val/ or test/, one sub-folder per class", _folder,
                options={"path": None, "image_size": 32, "skip_bad_images": False}, has_validation=True,
                needs_download=False, local=(folder.CACHE_FOLDER,)),
)
DATASET_SPECS = {spec.name: spec for spec in SPECS}
DATASETS = tuple(DATASET_SPECS)


def get_spec(name: str) -> DatasetSpec:
    """The DatasetSpec of ``name`` (case and surrounding spaces ignored); DataError listing the known names."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in DATASET_SPECS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASET_SPECS[key]


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    **options,
) -> Dataset:
    """Load a dataset by name with its options (see ``DATASET_SPECS[name].options``).

    DataError for an unknown name, an option the dataset does not take, or a missing/corrupt dataset.
    """
    spec = get_spec(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        takes = f"its options: {', '.join(spec.options)}" if spec.options else "it takes no options"
        raise DataError(f"dataset {spec.name!r} has no option {', '.join(map(repr, unknown))}; {takes}")
    return spec.loader(data_dir, download, progress, **options)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder_path, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(folder_path, n)).st_size
            except OSError:
                pass  # vanished or unreadable: the listing is informational
    return total


def _idx_status(path: Path) -> str:
    missing = [n for n in mnist.FILES if mnist.find_file(path, n) is None]
    return "complete" if not missing else f"incomplete (missing {', '.join(missing)})"


def _folder_cache_status(path: Path) -> str:
    try:
        manifest = json.loads((path / folder.MANIFEST).read_text(encoding="utf-8"))
        h, w = manifest["image_size"]
        count = sum(len(v) for v in manifest["splits"].values())
        source = manifest["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return "incomplete cache (no valid manifest; rebuilt on next use)"
    gone = "" if Path(source).is_dir() else ", source folder is gone"
    return f"cached {count} images of {source} at {h}x{w}{gone}"


def _status(spec: DatasetSpec, entry: str, path: Path) -> str:
    if spec.name in ("mnist", "fashion-mnist"):
        return _idx_status(path)
    if path.is_file():
        return "downloaded archive"
    return "extracted (python version)" if entry == cifar10.PICKLE_FOLDER else "extracted"


def cached_datasets(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path, int, str]]:
    """What is on disk: [(dataset name, path, size in bytes, status)] in registry order.

    Looks in ``data_dir`` (default ``default_data_dir()``) for each dataset's extracted
    folders, archives, IDX folders and image-folder caches; the shipped digits file is
    always listed. Status examples: "extracted", "downloaded archive", "complete",
    "incomplete (missing ...)", "cached N images of DIR at HxW", "shipped with gpucnn".
    """
    root = resolve_root(data_dir)
    rows = []
    for spec in SPECS:
        if spec.name == "digits":
            rows.append((spec.name, DIGITS_FILE, _size(DIGITS_FILE), "shipped with gpucnn"))
            continue
        for entry in spec.local:
            path = root / entry
            if not path.exists():
                continue
            if spec.name == "folder":
                for sub in sorted(p for p in path.iterdir() if p.is_dir()):
                    rows.append((spec.name, sub, _size(sub), _folder_cache_status(sub)))
                continue
            rows.append((spec.name, path, _size(path), _status(spec, entry, path)))
    return rows
