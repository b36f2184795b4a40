"""The offline "digits" dataset: 1797 handwritten digits shipped inside the package.

Origin: the UCI ML "Optical Recognition of Handwritten Digits" test set (E. Alpaydin,
C. Kaynak, 1998; CC BY 4.0) as bundled with scikit-learn (BSD-3-Clause) in
``sklearn/datasets/data/digits.csv.gz``. ``digits.npz`` next to this module holds the same
numbers (``images`` (1797, 8, 8) uint8 in 0..16, ``labels`` (1797,) uint8) and was written
once by ``build_digits_file``; scikit-learn is not needed at run time.

Presentation: each 8x8 image is scaled from 0..16 to 0..255, upsampled 4x by nearest
neighbour to 32x32 and repeated on 3 channels, giving (3, 32, 32) uint8 like CIFAR-10, so
the default CIFAR networks train on it unchanged, in seconds, with no download.
Split (fixed, deterministic): the first 1438 images train, the last 359 (20%) test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gpucnn.data.dataset import Dataset
from gpucnn.errors import DataError

DIGITS_FILE = Path(__file__).with_name("digits.npz")
CLASSES = [str(d) for d in range(10)]
UPSAMPLE = 4
CHANNELS = 3


def to_images(raw: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> (N, 3, 32, 32) uint8 in 0..255 (rounded), nearest-neighbour upsampled."""
    scaled = ((raw.astype(np.uint16) * 255 + 8) // 16).astype(np.uint8)
    big = scaled.repeat(UPSAMPLE, axis=1).repeat(UPSAMPLE, axis=2)
    return np.ascontiguousarray(np.broadcast_to(big[:, None], (big.shape[0], CHANNELS, *big.shape[1:])))


def read_raw(path: str | os.PathLike = DIGITS_FILE) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) uint8 0..16, labels (N,) int64) from the shipped .npz; DataError if damaged."""
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"digits file {path} is missing or damaged ({exc}); reinstall gpucnn") from exc
    if images.ndim != 3 or images.shape[1:] != (8, 8) or labels.shape != (images.shape[0],) or \
            images.max(initial=0) > 16 or labels.max(initial=0) > 9:
        raise DataError(f"digits file {path} is damaged: images {images.shape}, labels {labels.shape}; "
                        "expected (N, 8, 8) values 0..16 and (N,) labels 0..9")
    return images.astype(np.uint8), labels.astype(np.int64)


def load_digits() -> Dataset:
    """The digits dataset: train (1438, 3, 32, 32), test (359, 3, 32, 32) uint8; labels int64 0..9."""
    raw, labels = read_raw()
    n_train = len(labels) - len(labels) // 5
    x = to_images(raw)
    return Dataset(
        name="digits",
        x_train=x[:n_train],
        y_train=labels[:n_train],
        x_test=x[n_train:],
        y_test=labels[n_train:],
        classes=list(CLASSES),
    )


def build_digits_file(csv_gz: str | os.PathLike, dest: str | os.PathLike = DIGITS_FILE) -> None:
    """Maintenance: convert scikit-learn's digits.csv.gz (64 pixels + label a row) into ``dest`` (.npz)."""
    table = np.loadtxt(csv_gz, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 65:
        raise ValueError(f"{csv_gz}: expected 65 columns (64 pixels + label), got {table.shape[1]}")
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp.npz")
    np.savez_compressed(tmp, images=table[:, :64].reshape(-1, 8, 8).astype(np.uint8),
                        labels=table[:, 64].astype(np.uint8))
    os.replace(tmp, dest)
