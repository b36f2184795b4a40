"""CIFAR-10 from its official binary archive (no pickle).

The archive ``cifar-10-binary.tar.gz`` holds ``cifar-10-batches-bin/`` with
``data_batch_1.bin`` .. ``data_batch_5.bin`` (10000 records each), ``test_batch.bin`` and
``batches.meta.txt`` (the class names, one a line). A record is 1 label byte followed by
3072 pixel bytes: the 32x32 red plane, then green, then blue (CHW, row-major).

On first use the archive is downloaded into the data directory, checked against its MD5
and extracted; an existing ``cifar-10-batches-bin/`` there is used as is (or, failing
that, the python version ``cifar-10-batches-py/``). Overrides (for mirrors and tests):
``GPUCNN_CIFAR10_URL`` and ``GPUCNN_CIFAR10_MD5``.

The python version: each batch file is a pickled dict ``{b"data": (N, 3072) uint8 array,
b"labels": [int]*N, ...}`` and ``batches.meta`` holds ``{b"label_names": [bytes]*10}``.
Pickle can run arbitrary code, so the unpickler here resolves only the globals NumPy needs
to rebuild an array (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``, plus
``_codecs.encode`` for bytes) and refuses everything else (e.g. ``os.system``) with a
DataError naming the file. Used only when a user already has that folder in the data
directory; the binary archive remains the default.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from gpucnn.data.archive import ensure_extracted
from gpucnn.data.dataset import Dataset
from gpucnn.data.download import DEADLINE, STALL_TIMEOUT
from gpucnn.data.files import read_bytes, resolve_root
from gpucnn.errors import DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
URL_ENV = "GPUCNN_CIFAR10_URL"
MD5_ENV = "GPUCNN_CIFAR10_MD5"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
PICKLE_FOLDER = "cifar-10-batches-py"
PICKLE_META_FILE = "batches.meta"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
IMAGE_SHAPE = (3, 32, 32)
# What batches.meta.txt holds; known without it for checkpoints that predate stored class names.
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = 10


def read_label_records(path: str | os.PathLike, what: str,
                       label_columns: tuple[tuple[str, int], ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The CIFAR binary format: records of one byte per label column, then 3072 pixel bytes.

    ``label_columns``: (name, class count) per leading label byte ("" for CIFAR-10's one label).
    Returns (x (N, 3, 32, 32) uint8, [labels (N,) int64 per column]); DataError naming ``what``
    and the file if the size or a label is off.
    """
    path = Path(path)
    width = len(label_columns) + int(np.prod(IMAGE_SHAPE))
    raw = np.frombuffer(read_bytes(path, what, f"delete {path.parent} to download and extract it again"),
                        dtype=np.uint8)
    if raw.size == 0 or raw.size % width:
        labels = ("1 label byte" if len(label_columns) == 1
                  else " and ".join(name for name, _ in label_columns) + " label bytes")
        raise DataError(f"{what} file {path} is corrupt: {raw.size} bytes, expected a non-zero multiple of "
                        f"{width} ({labels} + 3072 pixel bytes per image)")
    records = raw.reshape(-1, width)
    columns = []
    for column, (name, count) in enumerate(label_columns):
        values = records[:, column]
        bad = np.flatnonzero(values >= count)
        if bad.size:
            raise DataError(f"{what} file {path} is corrupt: record {bad[0]} has {name + ' ' if name else ''}label "
                            f"{values[bad[0]]}, expected 0..{count - 1}")
        columns.append(values.astype(np.int64))
    x = np.ascontiguousarray(records[:, len(label_columns):]).reshape(-1, *IMAGE_SHAPE)
    return x, columns


def read_name_lines(path: str | os.PathLike, what: str, count: int) -> list[str]:
    """The non-empty lines of a class-names file; DataError unless there are ``count``."""
    path = Path(path)
    raw = read_bytes(path, what, f"delete {path.parent} to download and extract it again")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} file {path} is unreadable: not UTF-8 text ({exc.reason})") from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != count:
        raise DataError(f"{what} file {path} is corrupt: {len(names)} class names, expected {count}")
    return names


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse one binary batch file into (x (N, 3, 32, 32) uint8, y (N,) int64); DataError if malformed."""
    x, (labels,) = read_label_records(path, "CIFAR-10", (("", NUM_CLASSES),))
    return x, labels


def read_classes(path: str | os.PathLike) -> list[str]:
    """The class names in ``batches.meta.txt`` (non-empty lines); DataError unless there are 10."""
    return read_name_lines(path, "CIFAR-10", NUM_CLASSES)


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


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(path: str | os.PathLike) -> object:
    """Unpickle ``path`` allowing only plain containers and NumPy arrays; DataError otherwise."""
    path = Path(path)
    raw = read_bytes(path, "CIFAR-10")
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any failure of an untrusted pickle is a data problem
        raise DataError(f"CIFAR-10 file {path} is not a valid CIFAR pickle: {exc}") from exc


def _key(d: dict, name: str):
    return d[name.encode()] if name.encode() in d else d[name]


def read_pickle_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One python-version batch -> (x (N, 3, 32, 32) uint8, y (N,) int64); DataError if malformed."""
    content = safe_unpickle(path)
    try:
        data = np.asarray(_key(content, "data"))
        labels = np.asarray(_key(content, "labels"))
    except (KeyError, TypeError) as exc:
        raise DataError(f"CIFAR-10 file {path} lacks the 'data'/'labels' entries") from exc
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],) \
            or labels.dtype.kind not in "iu":
        raise DataError(f"CIFAR-10 file {path} is corrupt: data {data.shape} {data.dtype}, labels {labels.shape}; "
                        "expected (N, 3072) uint8 and N integer labels")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"CIFAR-10 file {path} is corrupt: labels outside 0..{NUM_CLASSES - 1}")
    return np.ascontiguousarray(data).reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def read_pickle_folder(folder: str | os.PathLike) -> Dataset:
    """Load an extracted ``cifar-10-batches-py`` folder into a Dataset."""
    folder = Path(folder)
    train = [read_pickle_batch(folder / name.removesuffix(".bin")) for name in TRAIN_FILES]
    x_test, y_test = read_pickle_batch(folder / TEST_FILE.removesuffix(".bin"))
    meta = safe_unpickle(folder / PICKLE_META_FILE)
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _key(meta, "label_names")]
    except (KeyError, TypeError) as exc:
        raise DataError(f"CIFAR-10 file {folder / PICKLE_META_FILE} lacks 'label_names'") from exc
    if len(names) != NUM_CLASSES:
        raise DataError(f"CIFAR-10 file {folder / PICKLE_META_FILE} is corrupt: {len(names)} class names, "
                        f"expected {NUM_CLASSES}")
    return assemble_dataset(train, (x_test, y_test), names)


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    url: str | None = None,
    md5: str | None = None,
    timeout: float = STALL_TIMEOUT,
    deadline: float | None = DEADLINE,
) -> Dataset:
    """CIFAR-10: 50000 train and 10000 test images (3, 32, 32) uint8, labels int64 0..9.

    An extracted ``cifar-10-batches-bin/`` in the data directory is used as is; failing that,
    an extracted python version ``cifar-10-batches-py/`` (read by a restricted unpickler).
    ``data_dir`` defaults to ``default_data_dir()``; ``url``/``md5`` default to
    $GPUCNN_CIFAR10_URL/$GPUCNN_CIFAR10_MD5, else the official ones. ``download=False``
    raises DataError when neither the extracted folder nor the archive is present.
    ``timeout`` is the download's stall timeout, ``deadline`` its overall limit (see ``download_file``).
    """
    root = resolve_root(data_dir)
    folder = root / FOLDER
    if not folder.is_dir() and (root / PICKLE_FOLDER).is_dir():
        return read_pickle_folder(root / PICKLE_FOLDER)
    folder = ensure_extracted(root, FOLDER, ARCHIVE_NAME, url or os.environ.get(URL_ENV) or URL,
                              md5 or os.environ.get(MD5_ENV) or MD5, "CIFAR-10", download, progress, timeout, deadline)
    return read_folder(folder)
