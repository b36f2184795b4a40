"""The dataset registry: names, facts, options, and cached_datasets (what is on disk)."""

import gzip
import json

import numpy as np
import pytest

from gpucnn.data import DATASET_SPECS, DATASETS, cached_datasets, load_dataset
from gpucnn.data.digits import DIGITS_FILE
from gpucnn.data.mnist import FILES
from gpucnn.errors import DataError


def test_every_name_has_a_spec_with_its_facts():
    assert DATASETS == tuple(DATASET_SPECS) and len(set(DATASETS)) == len(DATASETS)
    assert DATASET_SPECS["cifar100"].options == {"label_mode": "fine"}
    assert DATASET_SPECS["folder"].options == {"path": None, "image_size": 32, "skip_bad_images": False}
    assert [n for n in DATASETS if DATASET_SPECS[n].has_validation] == ["folder"]
    assert [n for n in DATASETS if not DATASET_SPECS[n].needs_download] == ["digits", "folder"]
    assert DATASET_SPECS["mnist"].image_shape == (1, 28, 28) and DATASET_SPECS["cifar10"].num_classes == 10


def test_names_are_case_insensitive_and_options_checked():
    ds = load_dataset("  Digits ")
    assert ds.name == "digits" and ds.image_shape == DATASET_SPECS["digits"].image_shape
    with pytest.raises(DataError, match="^dataset 'digits' has no option 'label_mode'; it takes no options$"):
        load_dataset("digits", label_mode="coarse")
    with pytest.raises(DataError, match="^dataset 'cifar10' has no option 'image_size', 'path'; it takes no options"):
        load_dataset("cifar10", path="x", image_size=3)


def test_cached_datasets_lists_what_is_on_disk(tmp_path):
    assert cached_datasets(tmp_path / "none") == [("digits", DIGITS_FILE, DIGITS_FILE.stat().st_size,
                                                   "shipped with gpucnn")]
    (tmp_path / "cifar-10-batches-bin").mkdir()
    (tmp_path / "cifar-10-batches-bin" / "a.bin").write_bytes(bytes(100))
    (tmp_path / "cifar-10-batches-bin" / "b.bin").write_bytes(bytes(23))
    (tmp_path / "cifar-100-binary.tar.gz").write_bytes(bytes(7))
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    for name in FILES:
        (tmp_path / "MNIST" / "raw" / f"{name}.gz").write_bytes(gzip.compress(b"x"))
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "fashion-mnist" / FILES[0]).write_bytes(bytes(5))
    cache = tmp_path / "folder-cache" / "imgs-0123"
    cache.mkdir(parents=True)
    (cache / "manifest.json").write_text(json.dumps({"path": str(tmp_path / "imgs"), "image_size": [8, 6],
                                                     "splits": {"train": [["a/1.png", 1, 1]] * 3,
                                                                "val": [["a/2.png", 1, 1]]}}))
    (tmp_path / "folder-cache" / "broken-1").mkdir()
    rows = cached_datasets(tmp_path)
    assert [(name, path.relative_to(tmp_path).as_posix() if name != "digits" else path.name, status)
            for name, path, _, status in rows] == [
        ("cifar10", "cifar-10-batches-bin", "extracted"),
        ("cifar100", "cifar-100-binary.tar.gz", "downloaded archive"),
        ("mnist", "MNIST/raw", "complete"),
        ("fashion-mnist", "fashion-mnist", "incomplete (missing train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                                           "t10k-labels-idx1-ubyte)"),
        ("digits", "digits.npz", "shipped with gpucnn"),
        ("folder", "folder-cache/broken-1", "incomplete cache (no valid manifest; rebuilt on next use)"),
        ("folder", "folder-cache/imgs-0123", f"cached 4 images of {tmp_path / 'imgs'} at 8x6, source folder is gone"),
    ]
    sizes = {path.name: size for _, path, size, _ in rows}
    assert sizes["cifar-10-batches-bin"] == 123 and sizes["cifar-100-binary.tar.gz"] == 7
    assert sizes["imgs-0123"] == (cache / "manifest.json").stat().st_size


def test_cached_datasets_sees_a_real_folder_cache(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for split in ("train", "test"):
        (tmp_path / "imgs" / split / "k").mkdir(parents=True)
        Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "imgs" / split / "k" / "a.png")
    load_dataset("folder", data_dir=tmp_path / "d", progress=False, path=tmp_path / "imgs", image_size=(2, 5))
    (row,) = [r for r in cached_datasets(tmp_path / "d") if r[0] == "folder"]
    assert row[3] == f"cached 2 images of {(tmp_path / 'imgs').resolve()} at 2x5"
    assert row[2] > 2 * 3 * 2 * 5  # the two arrays and the manifest
