"""MNIST and Fashion-MNIST from their four standard IDX files.

Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``). Images are (N, 28, 28) uint8
and become (N, 1, 28, 28); labels are 0..9.

Local copies are looked for under the data directory in the folder the files usually
live in: ``mnist/`` or ``MNIST/raw/`` (as torchvision leaves them) for MNIST,
``fashion-mnist/`` or ``FashionMNIST/raw/`` for Fashion-MNIST; the first folder that holds
all four files (each plain or gzipped) is used, and checked by the IDX parser. Otherwise
the missing .gz files are downloaded into the first folder and checked against their
published MD5. Mirror overrides: ``GPUCNN_MNIST_URL`` / ``GPUCNN_FASHION_MNIST_URL`` (a base
URL the file names are appended to).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpucnn.data.dataset import Dataset
from gpucnn.data.download import DEADLINE, STALL_TIMEOUT, download_file, offline_hint
from gpucnn.data.files import make_dir, resolve_root
from gpucnn.data.idx import read_idx
from gpucnn.errors import DataError

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10


@dataclass(frozen=True)
class Variant:
    """One IDX dataset: its name, where local copies live, where to download, the .gz files' MD5s."""

    name: str
    title: str
    folders: tuple[str, ...]
    mirrors: tuple[str, ...]
    url_env: str
    md5s: dict
    classes: tuple[str, ...]


MNIST = Variant(
    name="mnist", title="MNIST", folders=("mnist", "MNIST/raw"),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    url_env="GPUCNN_MNIST_URL",
    md5s={
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    classes=tuple(str(d) for d in range(10)),
)
FASHION_MNIST = Variant(
    name="fashion-mnist", title="Fashion-MNIST", folders=("fashion-mnist", "FashionMNIST/raw"),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    url_env="GPUCNN_FASHION_MNIST_URL",
    md5s={
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"),
)
VARIANTS = {v.name: v for v in (MNIST, FASHION_MNIST)}


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (plain first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_local(root: Path, variant: Variant) -> dict[str, Path] | None:
    """{file name: path} from the first of the variant's folders under ``root`` holding all four files."""
    for sub in variant.folders:
        found = {name: find_file(root / sub, name) for name in FILES}
        if all(found.values()):
            return found
    return None


def read_split(images_path: Path, labels_path: Path, title: str) -> tuple[np.ndarray, np.ndarray]:
    """(x (N, 1, 28, 28) uint8, y (N,) int64) from an images and a labels IDX file; DataError if they disagree."""
    images = read_idx(images_path, title)
    labels = read_idx(labels_path, title)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SIZE:
        raise DataError(f"{title} file {images_path} holds {images.dtype} {images.shape}, expected uint8 images "
                        f"(N, {IMAGE_SIZE[0]}, {IMAGE_SIZE[1]})")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{title} file {labels_path} holds {labels.dtype} {labels.shape}, expected uint8 labels (N,)")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{title} files disagree: {images_path} has {images.shape[0]} images, {labels_path} has "
                        f"{labels.shape[0]} labels")
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(f"{title} file {labels_path} is corrupt: label {bad[0]} is {labels[bad[0]]}, "
                        f"expected 0..{NUM_CLASSES - 1}")
    return np.ascontiguousarray(images[:, None]), labels.astype(np.int64)


def download_missing(root: Path, variant: Variant, base_url: str | None, md5s: dict | None, progress: bool,
                     timeout: float, deadline: float | None) -> dict[str, Path]:
    """Download the .gz files not yet in ``root/<first folder>`` (trying each mirror); return all four paths."""
    folder = make_dir(root / variant.folders[0])
    override = base_url or os.environ.get(variant.url_env)
    mirrors = (override,) if override else variant.mirrors
    md5s = {**variant.md5s, **(md5s or {})}
    hint = offline_hint(f"{variant.folders[0]}/ (or {variant.folders[1]}/) holding {', '.join(FILES)} "
                        "(plain or .gz)")
    paths = {}
    for name in FILES:
        existing = find_file(folder, name)  # a partial earlier download or copy: keep what is there
        if existing is not None:
            paths[name] = existing
            continue
        for i, mirror in enumerate(mirrors):
            try:
                paths[name] = download_file(f"{mirror.rstrip('/')}/{name}.gz", folder / f"{name}.gz", md5=md5s[name],
                                            progress=progress, timeout=timeout, deadline=deadline, hint=hint)
                break
            except DataError:
                if i == len(mirrors) - 1:
                    raise
    return paths


def load_idx_dataset(
    variant: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    base_url: str | None = None,
    md5s: dict | None = None,
    timeout: float = STALL_TIMEOUT,
    deadline: float | None = DEADLINE,
) -> Dataset:
    """MNIST or Fashion-MNIST: 60000 train and 10000 test images (1, 28, 28) uint8, labels int64 0..9.

    variant: ``"mnist"`` or ``"fashion-mnist"``; base_url: a mirror (default: the env
    override, else the official mirrors, tried in order); md5s: {file name: md5} overrides
    for the .gz files. ``download=False`` raises DataError when no local copy is found.
    """
    if variant not in VARIANTS:
        raise DataError(f"unknown IDX dataset {variant!r}; expected one of: {', '.join(VARIANTS)}")
    spec = VARIANTS[variant]
    root = resolve_root(data_dir)
    paths = find_local(root, spec)
    if paths is None:
        if not download:
            raise DataError(f"{spec.title} is not in {root} (expected {' or '.join(f + '/' for f in spec.folders)} "
                            f"holding {', '.join(FILES)}, plain or .gz) and download is disabled; enable download "
                            "or point --data-dir at a copy")
        paths = download_missing(make_dir(root), spec, base_url, md5s, progress, timeout, deadline)
    x_train, y_train = read_split(paths[FILES[0]], paths[FILES[1]], spec.title)
    x_test, y_test = read_split(paths[FILES[2]], paths[FILES[3]], spec.title)
    return Dataset(name=spec.name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   classes=list(spec.classes))
