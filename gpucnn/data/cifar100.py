"""CIFAR-100 from its official binary archive.

The archive ``cifar-100-binary.tar.gz`` holds ``cifar-100-binary/`` with ``train.bin``
(50000 records), ``test.bin`` (10000), ``fine_label_names.txt`` (100 names) and
``coarse_label_names.txt`` (20 superclass names), one a line. A record is the coarse label
byte, the fine label byte, then 3072 pixel bytes: the 32x32 red plane, green, blue (CHW).

On first use the archive is downloaded into the data directory, checked against its MD5
and extracted; an existing ``cifar-100-binary/`` there is used as is. Overrides (for
mirrors and tests): ``GPUCNN_CIFAR100_URL`` and ``GPUCNN_CIFAR100_MD5``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gpucnn.data.archive import ensure_extracted
from gpucnn.data.dataset import Dataset
from gpucnn.data.download import DEADLINE, STALL_TIMEOUT
from gpucnn.data.cifar10 import read_label_records, read_name_lines
from gpucnn.data.files import resolve_root
from gpucnn.errors import DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
MD5 = "03b5dce01913d631647c71ecec9e9cb8"
URL_ENV = "GPUCNN_CIFAR100_URL"
MD5_ENV = "GPUCNN_CIFAR100_MD5"
ARCHIVE_NAME = "cifar-100-binary.tar.gz"
FOLDER = "cifar-100-binary"
TRAIN_FILE = "train.bin"
TEST_FILE = "test.bin"
LABEL_MODES = {"fine": ("fine_label_names.txt", 100), "coarse": ("coarse_label_names.txt", 20)}
IMAGE_SHAPE = (3, 32, 32)


def check_label_mode(label_mode: str) -> str:
    if label_mode not in LABEL_MODES:
        raise DataError(f"CIFAR-100 label_mode {label_mode!r} is not one of: {', '.join(LABEL_MODES)}")
    return label_mode


def read_records(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One binary file -> (x (N, 3, 32, 32) uint8, fine (N,) int64, coarse (N,) int64); DataError if malformed."""
    columns = (("coarse", LABEL_MODES["coarse"][1]), ("fine", LABEL_MODES["fine"][1]))  # the bytes' order
    x, (coarse, fine) = read_label_records(path, "CIFAR-100", columns)
    return x, fine, coarse


def read_names(path: str | os.PathLike, count: int) -> list[str]:
    """The non-empty lines of a label-names file; DataError unless there are ``count``."""
    return read_name_lines(path, "CIFAR-100", count)


def read_folder(folder: str | os.PathLike, label_mode: str = "fine") -> Dataset:
    """Load an extracted ``cifar-100-binary`` folder; labels are the fine (100) or coarse (20) ones."""
    folder = Path(folder)
    names_file, count = LABEL_MODES[check_label_mode(label_mode)]
    pick = 1 if label_mode == "fine" else 2
    train, test = read_records(folder / TRAIN_FILE), read_records(folder / TEST_FILE)
    return Dataset(name="cifar100", x_train=train[0], y_train=train[pick], x_test=test[0], y_test=test[pick],
                   classes=read_names(folder / names_file, count))


def load_cifar100(
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    label_mode: str = "fine",
    url: str | None = None,
    md5: str | None = None,
    timeout: float = STALL_TIMEOUT,
    deadline: float | None = DEADLINE,
) -> Dataset:
    """CIFAR-100: 50000 train and 10000 test images (3, 32, 32) uint8, labels int64.

    label_mode: ``"fine"`` (100 classes, the default) or ``"coarse"`` (the 20 superclasses).
    Other arguments as in ``load_cifar10``.
    """
    check_label_mode(label_mode)
    folder = ensure_extracted(resolve_root(data_dir), FOLDER, ARCHIVE_NAME, url or os.environ.get(URL_ENV) or URL,
                              md5 or os.environ.get(MD5_ENV) or MD5, "CIFAR-100", download, progress, timeout,
                              deadline)
    return read_folder(folder, label_mode)
