"""CIFAR-10 from its official binary archive (no pickle).

The archive ``cifar-10-binary.tar.gz`` holds ``cifar-10-batches-bin/`` with
``data_batch_1.bin`` .. ``data_batch_5.bin`` (10000 records each), ``test_batch.bin`` and
``batches.meta.txt`` (the class names, one a line). A record is 1 label byte followed by
3072 pixel bytes: the 32x32 red plane, then green, then blue (CHW, row-major).

On first use the archive is downloaded into the data directory, checked against its MD5
and extracted; an existing ``cifar-10-batches-bin/`` there is used as is (or, failing
that, the python version ``cifar-10-batches-py/``; see ``cifar10_pickle``). Overrides (for
mirrors and tests): ``GPUCNN_CIFAR10_URL`` and ``GPUCNN_CIFAR10_MD5``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gpucnn.data.archive import extract_tar
from gpucnn.data.dataset import Dataset, default_data_dir
from gpucnn.data.download import download_file, file_md5
from gpucnn.errors import DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
URL_ENV = "GPUCNN_CIFAR10_URL"
MD5_ENV = "GPUCNN_CIFAR10_MD5"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32
NUM_CLASSES = 10


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse one binary batch file into (x (N, 3, 32, 32) uint8, y (N,) int64); DataError if malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CIFAR-10 file {path} is missing; delete {path.parent} to download and extract it again")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise DataError(f"CIFAR-10 file {path} is corrupt: {raw.size} bytes, expected a non-zero multiple of "
                        f"{RECORD_BYTES} (1 label byte + 3072 pixel bytes per image)")
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(f"CIFAR-10 file {path} is corrupt: record {bad[0]} has label {labels[bad[0]]}, "
                        f"expected 0..{NUM_CLASSES - 1}")
    x = np.ascontiguousarray(records[:, 1:]).reshape(-1, *IMAGE_SHAPE)
    return x, labels.astype(np.int64)


def read_classes(path: str | os.PathLike) -> list[str]:
    """The class names in ``batches.meta.txt`` (non-empty lines); DataError unless there are 10."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 file {path} is missing; delete {path.parent} to download and extract it again")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"CIFAR-10 file {path} is unreadable: {exc}") from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != NUM_CLASSES:
        raise DataError(f"CIFAR-10 file {path} is corrupt: {len(names)} class names, expected {NUM_CLASSES}")
    return names


def read_folder(folder: str | os.PathLike) -> Dataset:
    """Load an extracted ``cifar-10-batches-bin`` folder into a Dataset."""
    folder = Path(folder)
    train = [read_batch(folder / name) for name in TRAIN_FILES]
    return assemble_dataset(train, read_batch(folder / TEST_FILE), read_classes(folder / META_FILE))


def assemble_dataset(train_parts, test, classes) -> Dataset:
    """A CIFAR-10 Dataset from the parsed (images, labels) of each training file and the test file."""
    x_test, y_test = test
    return Dataset(
        name="cifar10",
        x_train=np.concatenate([x for x, _ in train_parts]),
        y_train=np.concatenate([y for _, y in train_parts]),
        x_test=x_test,
        y_test=y_test,
        classes=list(classes),
    )


def fetch_archive(root: Path, url: str, md5: str, progress: bool, timeout: float) -> Path:
    """Download the archive into ``root`` unless it is there; check the MD5 of a pre-existing one."""
    archive = root / ARCHIVE_NAME
    if archive.is_file():
        actual = file_md5(archive)
        if actual != md5.lower():
            raise DataError(f"{archive} fails its checksum (md5 {actual}, expected {md5.lower()}); "
                            "delete it to download again")
        return archive
    return download_file(url, archive, md5=md5, progress=progress, timeout=timeout)


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    url: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
) -> Dataset:
    """CIFAR-10: 50000 train and 10000 test images (3, 32, 32) uint8, labels int64 0..9.

    An extracted ``cifar-10-batches-bin/`` in the data directory is used as is; failing that,
    an extracted python version ``cifar-10-batches-py/`` (read by a restricted unpickler).
    ``data_dir`` defaults to ``default_data_dir()``; ``url``/``md5`` default to
    $GPUCNN_CIFAR10_URL/$GPUCNN_CIFAR10_MD5, else the official ones. ``download=False``
    raises DataError when neither the extracted folder nor the archive is present.
    """
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    folder = root / FOLDER
    if not folder.is_dir() and (root / "cifar-10-batches-py").is_dir():
        from gpucnn.data.cifar10_pickle import read_pickle_folder

        return read_pickle_folder(root / "cifar-10-batches-py")
    if not folder.is_dir():
        url = url or os.environ.get(URL_ENV) or URL
        md5 = md5 or os.environ.get(MD5_ENV) or MD5
        if not download and not (root / ARCHIVE_NAME).is_file():
            raise DataError(f"CIFAR-10 is not in {root} (expected {FOLDER}/ or {ARCHIVE_NAME}) and download is "
                            "disabled; enable download or point --data-dir at a copy")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create data directory {root}: {exc.strerror or exc}") from exc
        archive = fetch_archive(root, url, md5, progress, timeout)
        extract_tar(archive, root, FOLDER)
    return read_folder(folder)
