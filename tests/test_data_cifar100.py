"""CIFAR-100 binary format: fine/coarse labels, validation, archive verification and extraction."""

import hashlib
import io
import tarfile

import numpy as np
import pytest

from gpucnn.data import load_dataset
from gpucnn.data.cifar100 import load_cifar100, read_records
from gpucnn.errors import DataError

FOLDER = "cifar-100-binary"
FINE = [f"fine_{i}" for i in range(100)]
COARSE = [f"coarse_{i}" for i in range(20)]


def records_bytes(x, fine, coarse):
    return np.concatenate([np.asarray(coarse, np.uint8)[:, None], np.asarray(fine, np.uint8)[:, None],
                           x.reshape(len(fine), -1)], axis=1).tobytes()


def make_files(n_train=6, n_test=3, seed=0):
    """{file name: bytes} of a tiny cifar-100-binary/ folder, and the arrays in it."""
    rng = np.random.default_rng(seed)
    files, data = {}, {}
    for name, n in (("train.bin", n_train), ("test.bin", n_test)):
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, size=n), rng.integers(0, 20, size=n)
        files[name] = records_bytes(x, fine, coarse)
        data[name] = (x, fine, coarse)
    files["fine_label_names.txt"] = ("\n".join(FINE) + "\n").encode()
    files["coarse_label_names.txt"] = ("\n".join(COARSE) + "\n\n").encode()
    return files, data


def write_folder(root, **kw):
    files, data = make_files(**kw)
    (root / FOLDER).mkdir(parents=True)
    for name, raw in files.items():
        (root / FOLDER / name).write_bytes(raw)
    return data


def test_record_layout_coarse_then_fine(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8)
    path = tmp_path / "train.bin"
    path.write_bytes(records_bytes(x, [99, 7], [19, 3]))
    raw = path.read_bytes()
    assert raw[0] == 19 and raw[1] == 99 and raw[3074] == 3 and raw[3075] == 7
    assert raw[3074 + 2 + 1024 * 2 + 32 * 31 + 4] == x[1, 2, 31, 4]
    got_x, fine, coarse = read_records(path)
    np.testing.assert_array_equal(got_x, x)
    assert fine.tolist() == [99, 7] and coarse.tolist() == [19, 3] and fine.dtype == np.int64


def test_fine_labels_by_default_coarse_on_request(tmp_path):
    data = write_folder(tmp_path)
    ds = load_dataset("cifar100", data_dir=tmp_path, download=False)
    assert ds.name == "cifar100" and ds.classes == FINE and ds.num_classes == 100
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32) and ds.x_val is None
    np.testing.assert_array_equal(ds.x_train, data["train.bin"][0])
    np.testing.assert_array_equal(ds.y_train, data["train.bin"][1])
    coarse = load_dataset("cifar100", data_dir=tmp_path, download=False, label_mode="coarse")
    assert coarse.classes == COARSE and coarse.num_classes == 20
    np.testing.assert_array_equal(coarse.y_test, data["test.bin"][2])
    np.testing.assert_array_equal(coarse.x_test, data["test.bin"][0])


def test_bad_label_mode_and_option(tmp_path):
    with pytest.raises(DataError, match="label_mode 'super' is not one of: fine, coarse"):
        load_dataset("cifar100", data_dir=tmp_path, label_mode="super")
    with pytest.raises(DataError, match="dataset 'cifar100' has no option 'labels'; its options: label_mode"):
        load_dataset("cifar100", data_dir=tmp_path, labels="fine")


@pytest.mark.parametrize("column, value, message", [(0, 20, "coarse label 20, expected 0..19"),
                                                    (1, 100, "fine label 100, expected 0..99")])
def test_out_of_range_labels(tmp_path, column, value, message):
    write_folder(tmp_path)
    path = tmp_path / FOLDER / "test.bin"
    raw = bytearray(path.read_bytes())
    raw[3074 * 2 + column] = value
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"{path} is corrupt: record 2 has {message}"):
        load_cifar100(tmp_path, download=False)


def test_truncated_file_and_names(tmp_path):
    write_folder(tmp_path)
    path = tmp_path / FOLDER / "train.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=rf"{path} is corrupt: {6 * 3074 - 1} bytes, expected a non-zero multiple "
                                        "of 3074"):
        load_cifar100(tmp_path, download=False)
    write_folder(tmp_path / "b")
    (tmp_path / "b" / FOLDER / "coarse_label_names.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="coarse_label_names.txt is corrupt: 2 class names, expected 20"):
        load_cifar100(tmp_path / "b", download=False, label_mode="coarse")


def test_missing_without_download(tmp_path):
    with pytest.raises(DataError, match=rf"CIFAR-100 is not in {tmp_path} \(expected cifar-100-binary/ or "
                                        r"cifar-100-binary.tar.gz\) and download is disabled"):
        load_cifar100(tmp_path, download=False)


def archive_bytes(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def test_local_archive_is_verified_and_extracted(tmp_path, monkeypatch):
    files, data = make_files()
    archive = archive_bytes(files)
    (tmp_path / "cifar-100-binary.tar.gz").write_bytes(archive)
    with pytest.raises(DataError, match="fails its checksum .* expected 03b5dce01913d631647c71ecec9e9cb8"):
        load_cifar100(tmp_path, download=False)
    monkeypatch.setenv("GPUCNN_CIFAR100_MD5", hashlib.md5(archive).hexdigest())
    ds = load_cifar100(tmp_path, download=False, label_mode="coarse")
    np.testing.assert_array_equal(ds.y_train, data["train.bin"][2])
    assert sorted(p.name for p in tmp_path.iterdir()) == [FOLDER, "cifar-100-binary.tar.gz"]
