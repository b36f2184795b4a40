"""The offline digits dataset shipped inside the package."""

import numpy as np
import pytest

from gpucnn.data import BatchLoader, channel_stats, load_dataset
from gpucnn.data.digits import DIGITS_FILE, build_digits_file, read_raw, to_images
from gpucnn.errors import DataError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", data_dir="/nonexistent/never/used", download=False)


def test_shapes_split_and_classes(digits):
    assert digits.name == "digits" and digits.classes == [str(d) for d in range(10)]
    assert digits.x_train.shape == (1438, 3, 32, 32) and digits.x_test.shape == (359, 3, 32, 32)
    assert digits.x_train.dtype == np.uint8 and digits.y_train.dtype == np.int64
    assert digits.y_train.shape == (1438,) and digits.y_test.shape == (359,)
    for y in (digits.y_train, digits.y_test):
        counts = np.bincount(y, minlength=10)
        assert len(counts) == 10 and counts.min() >= 0.8 * counts.mean() and counts.max() <= 1.2 * counts.mean()


def test_split_is_fixed(digits):
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.x_test, digits.x_test)
    raw, labels = read_raw()
    np.testing.assert_array_equal(digits.y_test, labels[1438:])
    np.testing.assert_array_equal(digits.y_train, labels[:1438])


def test_presentation_is_upsampled_grey(digits):
    x = digits.x_train
    assert np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 0], x[:, 2])
    blocks = x[:, 0].reshape(-1, 8, 4, 8, 4)
    assert np.all(blocks == blocks[:, :, :1, :, :1])  # constant 4x4 blocks
    assert x.min() == 0 and x.max() == 255
    raw, _ = read_raw()
    expected = np.round(raw[:1438].astype(np.float64) * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(x[:, 0, ::4, ::4], expected)


def test_to_images_worked_example():
    raw = np.zeros((1, 8, 8), np.uint8)
    raw[0, 0, 1], raw[0, 7, 7], raw[0, 3, 3] = 16, 8, 1
    img = to_images(raw)
    assert img.shape == (1, 3, 32, 32)
    assert np.all(img[0, :, 0:4, 4:8] == 255) and np.all(img[0, :, 28:, 28:] == 128)
    assert np.all(img[0, :, 12:16, 12:16] == 16) and img.sum() == 3 * 16 * (255 + 128 + 16)


def test_matches_scikit_learn(digits):
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_digits()
    raw, labels = read_raw()
    np.testing.assert_array_equal(raw, bunch.images.astype(np.uint8))
    np.testing.assert_array_equal(labels, bunch.target)


def test_build_digits_file_round_trip(tmp_path):
    csv = tmp_path / "digits.csv"
    raw, labels = read_raw()
    table = np.concatenate([raw.reshape(-1, 64), labels[:, None]], axis=1)
    np.savetxt(csv, table[:25], fmt="%d", delimiter=",")
    out = tmp_path / "d.npz"
    build_digits_file(csv, out)
    got_raw, got_labels = read_raw(out)
    np.testing.assert_array_equal(got_raw, raw[:25])
    np.testing.assert_array_equal(got_labels, labels[:25])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "digits.csv"]  # no temp file left


def test_damaged_file_is_reported(tmp_path):
    bad = tmp_path / "digits.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"digits file {bad} is missing or damaged"):
        read_raw(bad)
    np.savez(bad, images=np.full((2, 8, 8), 17, np.uint8), labels=np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="values 0..16"):
        read_raw(bad)


def test_shipped_file_is_small():
    assert DIGITS_FILE.is_file() and DIGITS_FILE.stat().st_size < 100_000


def test_feeds_the_batch_loader(digits, numpy_backend):
    mean, std = channel_stats(digits.x_train)
    loader = BatchLoader(digits.x_train, digits.y_train, 256, numpy_backend, mean, std)
    x, y = next(iter(loader))
    assert x.shape == (256, 3, 32, 32) and y.shape == (256,)
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2
