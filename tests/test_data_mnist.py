"""IDX parsing (plain and gzipped) and the MNIST / Fashion-MNIST loaders on local copies."""

import gzip
import struct

import numpy as np
import pytest

from gpucnn.data import load_dataset
from gpucnn.data.idx import decode_idx, read_idx
from gpucnn.data.mnist import FASHION_MNIST, FILES, MNIST
from gpucnn.errors import DataError


def idx_bytes(array, type_byte=0x08):
    array = np.asarray(array)
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def make_split(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.uint8)


def write_idx_folder(folder, n_train=5, n_test=3, gz=(True, False, True, False), seed=0):
    """The four IDX files in ``folder`` (each gzipped or not, per ``gz``); returns the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    train, test = make_split(n_train, seed), make_split(n_test, seed + 1)
    arrays = dict(zip(FILES, (train[0], train[1], test[0], test[1])))
    for (name, array), zipped in zip(arrays.items(), gz):
        raw = idx_bytes(array)
        (folder / (name + ".gz" if zipped else name)).write_bytes(gzip.compress(raw) if zipped else raw)
    return arrays


def test_decode_idx_header_and_values(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(a)
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:8] == b"\x00\x00\x00\x02" and raw[16] == 0 and raw[-1] == 23
    np.testing.assert_array_equal(decode_idx(raw, "a"), a)
    b = np.array([[-2, 70000], [3, -1]], dtype=np.int32)  # multi-byte values are big-endian
    got = decode_idx(idx_bytes(b, 0x0C), "b")
    np.testing.assert_array_equal(got, b)
    assert got.dtype == np.int32 and got.dtype.byteorder in "=<|"
    f = np.array([1.5, -0.25], dtype=np.float32)
    np.testing.assert_array_equal(decode_idx(idx_bytes(f, 0x0D), "f"), f)


def test_read_idx_plain_and_gzipped(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    (tmp_path / "plain").write_bytes(idx_bytes(a))
    (tmp_path / "zipped.gz").write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(read_idx(tmp_path / "plain"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "zipped.gz"), a)


@pytest.mark.parametrize("mangle, message", [
    (lambda r: r[:3], "truncated: 3 bytes, shorter than the 4-byte IDX header"),
    (lambda r: b"\x00\x01" + r[2:], "not an IDX file: magic number 00010803"),
    (lambda r: r[:2] + b"\x07" + r[3:], "not an IDX file: magic number 00000703"),
    (lambda r: r[:3] + b"\x00" + r[4:], "corrupt: its header says 0 dimensions, expected at least 1"),
    (lambda r: r[:10], "truncated: 3 dimensions need a 16-byte header, the file has 10 bytes"),
    (lambda r: r[:-1], rf"truncated: {16 + 2 * 784 - 1} bytes, expected {16 + 2 * 784} for shape \(2, 28, 28\)"),
    (lambda r: r + b"\x00", rf"corrupt: {16 + 2 * 784 + 1} bytes, expected {16 + 2 * 784}"),
])
def test_corrupt_idx_is_named(tmp_path, mangle, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mangle(idx_bytes(np.zeros((2, 28, 28), np.uint8))))
    with pytest.raises(DataError, match=rf"^MNIST file {path} is {message}") as info:
        read_idx(path, "MNIST")
    assert "\n" not in str(info.value)


def test_truncated_gzip_is_named(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    zipped = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8) % 10))
    path.write_bytes(zipped[: len(zipped) // 2])
    with pytest.raises(DataError, match=rf"MNIST file {path} is a truncated or corrupt gzip file"):
        read_idx(path, "MNIST")


@pytest.mark.parametrize("name, spec, sub", [
    ("mnist", MNIST, "mnist"), ("mnist", MNIST, "MNIST/raw"),
    ("fashion-mnist", FASHION_MNIST, "fashion-mnist"), ("fashion-mnist", FASHION_MNIST, "FashionMNIST/raw"),
])
def test_local_copy_is_found_and_loaded(tmp_path, monkeypatch, name, spec, sub):
    monkeypatch.setenv(spec.url_env, "http://127.0.0.1:9/never-contacted")
    arrays = write_idx_folder(tmp_path / sub)
    ds = load_dataset(name, data_dir=tmp_path, download=True, progress=False)
    assert ds.name == name and ds.classes == list(spec.classes) and ds.image_shape == (1, 28, 28)
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.x_test[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])


def test_class_names():
    assert MNIST.classes == tuple("0123456789")
    assert FASHION_MNIST.classes[0] == "T-shirt/top" and FASHION_MNIST.classes[-1] == "Ankle boot"
    assert len(FASHION_MNIST.classes) == 10


def test_torchvision_folder_with_both_forms(tmp_path):
    # torchvision keeps the .gz next to the extracted file; the plain one is read
    arrays = write_idx_folder(tmp_path / "MNIST" / "raw", gz=(False,) * 4)
    for name in FILES:
        (tmp_path / "MNIST" / "raw" / f"{name}.gz").write_bytes(b"not gzip and never read")
    ds = load_dataset("mnist", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])


def test_mismatched_counts_and_bad_labels(tmp_path):
    folder = tmp_path / "mnist"
    write_idx_folder(folder, gz=(False,) * 4)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match="MNIST files disagree: .*t10k-images-idx3-ubyte has 3 images, "
                                        ".*t10k-labels-idx1-ubyte has 4 labels"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 10, 2], np.uint8)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is corrupt: label 1 is 10, expected 0..9"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((5, 32, 32), np.uint8)))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte holds uint8 \(5, 32, 32\), expected uint8 "
                                        r"images \(N, 28, 28\)"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_missing_without_download_names_the_folders(tmp_path):
    write_idx_folder(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()  # incomplete copy
    with pytest.raises(DataError, match=r"MNIST is not in .* \(expected mnist/ or MNIST/raw/ holding "
                                        r"train-images-idx3-ubyte, .*plain or .gz\) and download is disabled"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    with pytest.raises(DataError, match="Fashion-MNIST is not in .*fashion-mnist/ or FashionMNIST/raw/"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
