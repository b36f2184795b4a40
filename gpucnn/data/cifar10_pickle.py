"""CIFAR-10's python version (``cifar-10-batches-py``), read with a restricted unpickler.

Each batch file is a pickled dict ``{b"data": (N, 3072) uint8 array, b"labels": [int]*N,
...}`` and ``batches.meta`` holds ``{b"label_names": [bytes]*10}``. Pickle can run arbitrary
code, so the unpickler here resolves only the globals NumPy needs to rebuild an array
(``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``, plus ``_codecs.encode`` for bytes) and refuses everything else
(e.g. ``os.system``) with a DataError naming the file. Used only when a user already has
that folder in the data directory; the binary archive remains the default.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from gpucnn.data.cifar10 import IMAGE_SHAPE, NUM_CLASSES, TEST_FILE, TRAIN_FILES, assemble_dataset
from gpucnn.data.dataset import Dataset
from gpucnn.errors import DataError

FOLDER = "cifar-10-batches-py"
META_FILE = "batches.meta"
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
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 file {path} is missing")
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
    meta = safe_unpickle(folder / META_FILE)
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _key(meta, "label_names")]
    except (KeyError, TypeError) as exc:
        raise DataError(f"CIFAR-10 file {folder / META_FILE} lacks 'label_names'") from exc
    if len(names) != NUM_CLASSES:
        raise DataError(f"CIFAR-10 file {folder / META_FILE} is corrupt: {len(names)} class names, expected 10")
    return assemble_dataset(train, (x_test, y_test), names)
