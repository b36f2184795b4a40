"""Unreadable dataset files and folders (chmod 000) give a one-line DataError naming the path.

Run as root, chmod does not stop reads, so the "emulated" variant makes ``open`` and
``os.scandir`` refuse paths without read permission, the way the OS does for other users;
the "real" variant relies on the OS and is skipped under root.
"""

import builtins
import errno
import gzip
import os
import stat

import numpy as np
import pytest

from gpucnn.data import load_dataset
from gpucnn.errors import DataError


def _unreadable(path) -> bool:
    try:
        return isinstance(path, (str, bytes, os.PathLike)) and stat.S_IMODE(os.stat(path).st_mode) & 0o444 == 0
    except OSError:
        return False


@pytest.fixture(params=["real", "emulated"])
def permissions(request, monkeypatch):
    """Whether permission bits are enforced by the OS ("real") or by patched open/scandir ("emulated")."""
    if request.param == "real":
        if os.geteuid() == 0:
            pytest.skip("running as root: chmod 000 does not stop reads (the emulated variant covers this)")
        return request.param
    real_open, real_scandir = builtins.open, os.scandir

    def guarded_open(file, *args, **kwargs):
        if _unreadable(file):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    def guarded_scandir(path="."):
        if _unreadable(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "scandir", guarded_scandir)
    return request.param


@pytest.fixture
def lock():
    """chmod 000 a path for the test; restored afterwards so the temp folder can be removed."""
    locked = []

    def apply(path):
        locked.append((path, stat.S_IMODE(os.stat(path).st_mode)))
        os.chmod(path, 0)
        return path

    yield apply
    for path, mode in reversed(locked):
        os.chmod(path, mode)


def check_one_line(info, path):
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "permission denied" in message


def test_cifar10_file(tmp_path, permissions, lock):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(bytes(3073))
    (folder / "batches.meta.txt").write_text("\n".join("abcdefghij"))
    path = lock(folder / "data_batch_2.bin")
    with pytest.raises(DataError, match=rf"^CIFAR-10 file {path} is unreadable \(permission denied\)$") as info:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    check_one_line(info, path)


def test_cifar100_names_file(tmp_path, permissions, lock):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    (folder / "train.bin").write_bytes(bytes(3074))
    (folder / "test.bin").write_bytes(bytes(3074))
    path = folder / "fine_label_names.txt"
    path.write_text("\n".join(str(i) for i in range(100)))
    lock(path)
    with pytest.raises(DataError, match=rf"^CIFAR-100 file {path} is unreadable \(permission denied\)$"):
        load_dataset("cifar100", data_dir=tmp_path, download=False)


def test_mnist_file(tmp_path, permissions, lock):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, shape in (("train-images-idx3-ubyte", (1, 28, 28)), ("train-labels-idx1-ubyte", (1,)),
                        ("t10k-images-idx3-ubyte", (1, 28, 28)), ("t10k-labels-idx1-ubyte", (1,))):
        header = bytes([0, 0, 8, len(shape)]) + np.array(shape, ">u4").tobytes()
        (folder / f"{name}.gz").write_bytes(gzip.compress(header + bytes(int(np.prod(shape)))))
    path = lock(folder / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=rf"^MNIST file {path} is unreadable \(permission denied\)$"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


@pytest.fixture
def image_tree(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path / "imgs"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / split / name / "x.png")
    return root


def test_image_class_folder(tmp_path, image_tree, permissions, lock):
    path = lock(image_tree / "val" / "b")
    with pytest.raises(DataError, match=rf"^image folder {path} is unreadable \(permission denied\)$"):
        load_dataset("folder", data_dir=tmp_path / "c", progress=False, path=image_tree)


def test_image_root_folder(tmp_path, image_tree, permissions, lock):
    path = lock(image_tree)
    with pytest.raises(DataError, match=rf"^image folder {path} is unreadable \(permission denied\)$"):
        load_dataset("folder", data_dir=tmp_path / "c", progress=False, path=image_tree)


def test_image_file(tmp_path, image_tree, permissions, lock):
    path = lock(image_tree / "train" / "a" / "x.png")
    with pytest.raises(DataError, match=rf"^image file {path} is unreadable \(permission denied\)$"):
        load_dataset("folder", data_dir=tmp_path / "c", progress=False, path=image_tree)
