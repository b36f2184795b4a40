"""CIFAR-10 binary format: parsing, validation, safe extraction, offline use; dataset registry."""

import hashlib
import io
import tarfile

import numpy as np
import pytest

from gpucnn.data import DATASETS, channel_stats, default_data_dir, load_dataset
from gpucnn.data.archive import extract_tar
from gpucnn.data.cifar10 import load_cifar10, read_batch, read_classes
from gpucnn.errors import DataError, GpucnnError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FOLDER = "cifar-10-batches-bin"


def batch_bytes(x, y):
    return np.concatenate([np.asarray(y, np.uint8)[:, None], x.reshape(len(y), -1)], axis=1).tobytes()


def write_folder(root, records=2, seed=0):
    """An extracted cifar-10-batches-bin/ under root with ``records`` random records a file."""
    rng = np.random.default_rng(seed)
    folder = root / FOLDER
    folder.mkdir(parents=True)
    data = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        x = rng.integers(0, 256, size=(records, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, size=records)
        (folder / name).write_bytes(batch_bytes(x, y))
        data[name] = (x, y)
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n")
    return folder, data


def tar_bytes(entries):
    """A .tar.gz from (TarInfo, bytes or None) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_entry(name, data=b"abc"):
    return tarfile.TarInfo(name), data


def test_read_batch_parses_records(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    y = np.array([0, 9, 3, 5])
    path = tmp_path / "b.bin"
    # byte 0 is the label, then the red plane row by row, then green, then blue
    path.write_bytes(batch_bytes(x, y))
    raw = path.read_bytes()
    assert raw[3073] == 9 and raw[3074 + 1024 + 32 * 2 + 5] == x[1, 1, 2, 5]
    got_x, got_y = read_batch(path)
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    assert got_x.dtype == np.uint8 and got_y.dtype == np.int64 and got_x.flags.c_contiguous


@pytest.mark.parametrize("size", [0, 3072, 3074, 2 * 3073 - 1])
def test_read_batch_rejects_bad_size(tmp_path, size):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(bytes(size))
    with pytest.raises(DataError, match=rf"{path}.*{size} bytes, expected a non-zero multiple of 3073"):
        read_batch(path)


def test_read_batch_rejects_label_10(tmp_path):
    x = np.zeros((3, 3, 32, 32), np.uint8)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(batch_bytes(x, [1, 2, 10]))
    with pytest.raises(DataError, match=rf"{path}.*record 2 has label 10, expected 0..9"):
        read_batch(path)


def test_read_classes(tmp_path):
    path = tmp_path / "batches.meta.txt"
    path.write_text("\n".join(CLASSES) + "\n\n")
    assert read_classes(path) == CLASSES
    path.write_text("a\nb\n")
    with pytest.raises(DataError, match=rf"{path}.*2 class names, expected 10"):
        read_classes(path)


def test_pre_extracted_folder_is_used_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_CIFAR10_URL", "http://127.0.0.1:9/never-contacted")
    _, data = write_folder(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path, download=False, progress=False)
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.y_test.shape == (2,)
    np.testing.assert_array_equal(ds.x_train[4:6], data["data_batch_3.bin"][0])
    np.testing.assert_array_equal(ds.y_train[8:], data["data_batch_5.bin"][1])
    assert ds.classes == CLASSES and ds.num_classes == 10 and ds.image_shape == (3, 32, 32)
    # with download=True too: the folder wins, the bogus URL is never used
    assert load_dataset("CIFAR10", data_dir=tmp_path, progress=False).x_test.shape == (2, 3, 32, 32)


def test_corrupt_extracted_file_is_named(tmp_path):
    folder, _ = write_folder(tmp_path)
    (folder / "data_batch_4.bin").write_bytes(bytes(3073 * 2 + 5))
    with pytest.raises(DataError, match="data_batch_4.bin is corrupt"):
        load_cifar10(tmp_path, progress=False)
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(DataError, match="data_batch_4.bin is missing"):
        load_cifar10(tmp_path, progress=False)


def test_missing_dataset_without_download(tmp_path):
    with pytest.raises(DataError, match="CIFAR-10 is not in .* download is disabled"):
        load_dataset("cifar10", data_dir=tmp_path / "empty", download=False)
    assert not (tmp_path / "empty").exists()


def test_local_archive_is_verified_and_extracted(tmp_path, monkeypatch):
    source, data = write_folder(tmp_path / "src")
    archive = tar_bytes([file_entry(f"{FOLDER}/{p.name}", p.read_bytes()) for p in sorted(source.iterdir())])
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-binary.tar.gz").write_bytes(archive)
    monkeypatch.setenv("GPUCNN_CIFAR10_MD5", hashlib.md5(archive).hexdigest())
    ds = load_cifar10(root, download=False, progress=False)
    np.testing.assert_array_equal(ds.x_test, data["test_batch.bin"][0])
    assert sorted(p.name for p in root.iterdir()) == [FOLDER, "cifar-10-binary.tar.gz"]


def test_local_archive_with_wrong_checksum(tmp_path, monkeypatch):
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz fails its checksum .*delete it to download again"):
        load_cifar10(tmp_path, download=False, progress=False)
    assert not (tmp_path / FOLDER).exists()


def _tar_member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, (b"x" if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    "member, message",
    [
        (_tar_member(f"{FOLDER}/../../evil.txt"), "points outside"),
        (_tar_member("/tmp/evil.txt"), "absolute path"),
        (_tar_member(f"{FOLDER}/link", tarfile.SYMTYPE, "../../../etc/passwd"), "link member"),
        (_tar_member(f"{FOLDER}/hard", tarfile.LNKTYPE, "/etc/passwd"), "link member"),
        (_tar_member(f"{FOLDER}/fifo", tarfile.FIFOTYPE), "not a regular file"),
        (_tar_member("other/data_batch_1.bin"), "expected everything under cifar-10-batches-bin/"),
    ],
)
def test_unsafe_archive_members_are_refused(tmp_path, member, message):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes([file_entry(f"{FOLDER}/ok.bin"), member]))
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=message) as info:
        extract_tar(archive, dest, FOLDER)
    assert member[0].name in str(info.value)
    assert list(dest.iterdir()) == []  # nothing extracted, no staging folder left
    assert not (tmp_path / "evil.txt").exists()


def test_truncated_archive_is_refused(tmp_path):
    good = tar_bytes([file_entry(f"{FOLDER}/a.bin", bytes(range(256)) * 400)])
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="unreadable or truncated"):
        extract_tar(archive, tmp_path / "dest", FOLDER)
    assert list((tmp_path / "dest").iterdir()) == []


def test_extract_places_folder(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes([file_entry(f"./{FOLDER}/sub/a.bin", b"hello")]))
    out = extract_tar(archive, tmp_path / "dest", FOLDER)
    assert out == tmp_path / "dest" / FOLDER and (out / "sub" / "a.bin").read_bytes() == b"hello"
    assert [p.name for p in (tmp_path / "dest").iterdir()] == [FOLDER]


def test_unknown_dataset_lists_known_names():
    with pytest.raises(DataError, match=r"unknown dataset 'imagenet'; known datasets: cifar10, cifar100, mnist, "
                                        r"fashion-mnist, digits, folder$"):
        load_dataset("imagenet")
    assert issubclass(DataError, GpucnnError)
    assert DATASETS == ("cifar10", "cifar100", "mnist", "fashion-mnist", "digits", "folder")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("GPUCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "gpucnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "gpucnn"
    monkeypatch.setenv("GPUCNN_DATA_DIR", str(tmp_path / "explicit"))
    assert default_data_dir() == tmp_path / "explicit"


def test_channel_stats_matches_float64_reference():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(7, 3, 5, 6), dtype=np.uint8)
    x[:, 2] //= 4  # a channel with a different distribution
    mean, std = channel_stats(x)
    ref = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-12)
    assert mean.dtype == np.float64 and mean.shape == (3,)
    const_mean, const_std = channel_stats(np.full((2, 1, 2, 2), 51, np.uint8))
    assert const_mean.tolist() == [0.2] and const_std.tolist() == [0.0]
    with pytest.raises(ValueError, match="uint8"):
        channel_stats(x.astype(np.float32))


def write_pickle_folder(root, records=2, seed=0, protocol=2):
    """A cifar-10-batches-py/ folder as the official python version lays it out."""
    import pickle

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, size=(records, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=records).tolist()
        content = {b"batch_label": b"x", b"labels": y, b"data": x, b"filenames": [b"a.png"] * records}
        (folder / name).write_bytes(pickle.dumps(content, protocol=protocol))
        data[name] = (x.reshape(-1, 3, 32, 32), np.array(y))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder, data


@pytest.mark.parametrize("protocol", [2, 4])
def test_python_version_folder_is_read(tmp_path, protocol):
    _, data = write_pickle_folder(tmp_path, protocol=protocol)
    ds = load_cifar10(tmp_path, download=False, progress=False)
    assert ds.classes == CLASSES and ds.x_train.shape == (10, 3, 32, 32) and ds.x_train.dtype == np.uint8
    np.testing.assert_array_equal(ds.x_train[2:4], data["data_batch_2"][0])
    np.testing.assert_array_equal(ds.y_test, data["test_batch"][1])
    assert ds.y_train.dtype == np.int64


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > evil_marker",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    import pickle

    monkeypatch.chdir(tmp_path)
    folder, _ = write_pickle_folder(tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_3 is not a valid CIFAR pickle: refusing to load global "
                                        r"(posix|nt|os)\.system"):
        load_cifar10(tmp_path, download=False, progress=False)
    assert not (tmp_path / "evil_marker").exists()


def test_binary_folder_wins_over_python_version(tmp_path):
    write_pickle_folder(tmp_path, records=1)
    write_folder(tmp_path, records=2)
    assert load_cifar10(tmp_path, download=False).x_train.shape[0] == 10
