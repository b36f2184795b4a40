"""The "folder" dataset: class sub-folders of PNG/JPEG files, resizing, the .npy cache, bad images."""

import json
import os
import sys

import numpy as np
import pytest

from gpucnn.data import load_dataset
from gpucnn.data.folder import CACHE_FOLDER, load_folder, parse_image_size
from gpucnn.errors import DataError

Image = pytest.importorskip("PIL.Image")


def save(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def tree(root, spec, size=(6, 5), seed=0):
    """``spec``: {split: {class: count}} -> PNG files of random RGB images; {split: {class: [arrays]}}."""
    rng = np.random.default_rng(seed)
    made = {}
    for split, classes in spec.items():
        for name, count in classes.items():
            for i in range(count):
                a = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                save(root / split / name / f"img{i}.png", a)
                made.setdefault(split, {}).setdefault(name, []).append(a)
    return made


def test_reads_sorted_classes_and_pixels(tmp_path):
    made = tree(tmp_path / "imgs", {"train": {"dog": 2, "cat": 3}, "val": {"dog": 1, "cat": 1}}, size=(4, 4))
    ds = load_dataset("folder", data_dir=tmp_path / "cache", progress=False, path=tmp_path / "imgs", image_size=4)
    assert ds.name == "folder" and ds.classes == ["cat", "dog"]
    assert ds.x_train.shape == (5, 3, 4, 4) and ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1]
    # same size: no resampling, pixels are exact, RGB planes in CHW order
    np.testing.assert_array_equal(ds.x_train[0], made["train"]["cat"][0].transpose(2, 0, 1))
    np.testing.assert_array_equal(ds.x_train[4], made["train"]["dog"][1].transpose(2, 0, 1))
    # val/ without test/: it is both the shipped validation set and the test set
    assert ds.has_validation and ds.y_val.tolist() == [0, 1]
    np.testing.assert_array_equal(ds.x_val, ds.x_test)
    assert ds.with_validation(0.5) is ds


def test_resize_grey_and_jpeg_match_pillow(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, size=(9, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    save(tmp_path / "d" / "train" / "a" / "grey.png", grey)
    save(tmp_path / "d" / "train" / "b" / "photo.JPG", rgb, fmt="JPEG")
    save(tmp_path / "d" / "test" / "a" / "x.jpeg", rgb, fmt="JPEG")
    save(tmp_path / "d" / "test" / "b" / "y.png", rgb)
    (tmp_path / "d" / "train" / "a" / "notes.txt").write_text("ignored")
    ds = load_folder(tmp_path / "d", image_size=(3, 4), data_dir=tmp_path / "c", progress=False)
    assert ds.x_train.shape == (2, 3, 3, 4) and ds.x_val is None and ds.x_test.shape == (2, 3, 3, 4)
    ref = Image.open(tmp_path / "d" / "train" / "a" / "grey.png").convert("RGB").resize((4, 3), Image.BILINEAR)
    np.testing.assert_array_equal(ds.x_train[0], np.asarray(ref).transpose(2, 0, 1))
    assert np.array_equal(ds.x_train[0, 0], ds.x_train[0, 1])  # grey -> equal RGB planes
    ref = Image.open(tmp_path / "d" / "train" / "b" / "photo.JPG").convert("RGB").resize((4, 3), Image.BILINEAR)
    np.testing.assert_array_equal(ds.x_train[1], np.asarray(ref).transpose(2, 0, 1))


def test_cache_is_npy_reused_and_invalidated(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    tree(root, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
    first = load_folder(root, image_size=5, data_dir=tmp_path / "c", progress=False)
    (cache,) = (tmp_path / "c" / CACHE_FOLDER).iterdir()
    names = sorted(p.name for p in cache.iterdir())
    assert names == ["manifest.json", "test-x.npy", "test-y.npy", "train-x.npy", "train-y.npy"]
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["image_size"] == [5, 5] and [f[0] for f in manifest["splits"]["train"]] == \
        ["a/img0.png", "a/img1.png", "b/img0.png", "b/img1.png"]
    for npy in cache.glob("*.npy"):
        np.load(npy, allow_pickle=False)  # plain arrays, no pickle

    import gpucnn.data.folder as folder_module

    calls = []
    real = folder_module.decode_image
    monkeypatch.setattr(folder_module, "decode_image", lambda *a: calls.append(a[0]) or real(*a))
    again = load_folder(root, image_size=5, data_dir=tmp_path / "c", progress=False)
    assert calls == []  # served from the cache
    np.testing.assert_array_equal(again.x_train, first.x_train)
    # a changed file (new content and mtime) rebuilds it
    save(root / "train" / "b" / "img1.png", np.zeros((6, 5, 3), np.uint8))
    os.utime(root / "train" / "b" / "img1.png", ns=(1, 1))
    changed = load_folder(root, image_size=5, data_dir=tmp_path / "c", progress=False)
    assert len(calls) == 6 and changed.x_train[3].max() == 0
    # so does another image size, or a new file
    calls.clear()
    assert load_folder(root, image_size=3, data_dir=tmp_path / "c", progress=False).image_shape == (3, 3, 3)
    assert len(calls) == 6
    save(root / "train" / "a" / "img9.png", np.full((6, 5, 3), 7, np.uint8))
    assert load_folder(root, image_size=3, data_dir=tmp_path / "c", progress=False).x_train.shape[0] == 5


def test_corrupt_cache_is_rebuilt(tmp_path):
    root = tmp_path / "imgs"
    tree(root, {"train": {"a": 2}, "val": {"a": 1}})
    first = load_folder(root, image_size=4, data_dir=tmp_path / "c", progress=False)
    (cache,) = (tmp_path / "c" / CACHE_FOLDER).iterdir()
    (cache / "train-x.npy").write_bytes(b"garbage")
    again = load_folder(root, image_size=4, data_dir=tmp_path / "c", progress=False)
    np.testing.assert_array_equal(again.x_train, first.x_train)


def test_bad_image_is_named_or_skipped(tmp_path):
    root = tmp_path / "imgs"
    tree(root, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    bad = root / "train" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=rf"^image file {bad} is unreadable: ") as info:
        load_folder(root, data_dir=tmp_path / "c", progress=False)
    assert "\n" not in str(info.value)
    ds = load_folder(root, image_size=4, skip_bad_images=True, data_dir=tmp_path / "c", progress=False)
    assert ds.x_train.shape[0] == 4 and ds.y_train.tolist() == [0, 0, 1, 1]
    assert ds.notes == [f"skipped 1 unreadable image(s) in {root} (first: train/b/broken.png); skip_bad_images is on"]
    cached = load_folder(root, image_size=4, skip_bad_images=True, data_dir=tmp_path / "c", progress=False)
    assert cached.notes == ds.notes  # the note survives the cache
    with pytest.raises(DataError, match="broken.png is unreadable"):  # the cache does not hide it without the option
        load_folder(root, image_size=4, data_dir=tmp_path / "c", progress=False)


def test_class_with_only_bad_images_is_an_error(tmp_path):
    root = tmp_path / "imgs"
    tree(root, {"train": {"a": 1}, "val": {"a": 1, "b": 1}})
    (root / "train" / "b").mkdir()
    (root / "train" / "b" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"class folder\(s\) b have no readable images"):
        load_folder(root, skip_bad_images=True, data_dir=tmp_path / "c", progress=False)


@pytest.mark.parametrize("layout, message", [
    ({"train": {"a": 1}}, "must hold train/ and val/ \\(or test/\\)"),
    ({"val": {"a": 1}}, "must hold train/ and val/"),
    ({"train": {"a": 1, "b": 1}, "val": {"a": 1, "c": 1}}, r"val/ and train/ must have the same class folders; "
                                                           r"val/ lacks \['b'\] and has extra \['c'\]"),
])
def test_layout_errors(tmp_path, layout, message):
    tree(tmp_path / "imgs", layout)
    with pytest.raises(DataError, match=message):
        load_folder(tmp_path / "imgs", data_dir=tmp_path / "c", progress=False)


def test_empty_datasets_are_errors(tmp_path):
    root = tmp_path / "imgs"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    with pytest.raises(DataError, match=rf"image folder {root / 'train'} has no class folders"):
        load_folder(root, data_dir=tmp_path / "c", progress=False)
    (root / "train" / "a").mkdir()
    (root / "train" / "a" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=rf"class folder {root / 'train' / 'a'} has no PNG/JPEG images"):
        load_folder(root, data_dir=tmp_path / "c", progress=False)


def test_options_are_checked(tmp_path):
    with pytest.raises(DataError, match='dataset "folder" needs the option path=DIR'):
        load_dataset("folder", data_dir=tmp_path)
    with pytest.raises(DataError, match="image folder .*nowhere does not exist"):
        load_dataset("folder", data_dir=tmp_path, path=tmp_path / "nowhere")
    for bad in (0, -3, (4,), (4, 0), "32", True, 2.5):
        with pytest.raises(DataError, match="image_size must be a positive int or an \\(h, w\\) pair"):
            parse_image_size(bad)
    assert parse_image_size(8) == (8, 8) and parse_image_size([4, 6]) == (4, 6)
    with pytest.raises(DataError, match="dataset 'folder' has no option 'size'; its options: path, image_size, "
                                        "skip_bad_images"):
        load_dataset("folder", size=3)


def test_missing_pillow_says_how_to_install(tmp_path, monkeypatch):
    tree(tmp_path / "imgs", {"train": {"a": 1}, "val": {"a": 1}})
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match=r'^reading image folders needs Pillow: pip install "gpucnn\[images\]"$'):
        load_folder(tmp_path / "imgs", data_dir=tmp_path / "c", progress=False)
