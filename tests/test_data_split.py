"""The seeded, class-stratified validation split and Dataset.with_validation."""

import math

import numpy as np
import pytest

from gpucnn.data import Dataset, load_dataset, validation_split
from gpucnn.data.split import class_holdout_count


def labels_with_counts(counts, seed=0):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return np.random.default_rng(seed).permutation(y)


@pytest.mark.parametrize("count, fraction, expected", [
    (10, 0.1, 1), (10, 0.25, 3), (10, 0.35, 4), (4, 0.125, 1), (12, 0.125, 2), (2, 0.01, 1), (2, 0.9, 1),
    (1, 0.5, 0), (0, 0.5, 0), (7, 0.0, 0), (100, 0.2, 20),
])
def test_holdout_count_rounds_half_up_within_bounds(count, fraction, expected):
    assert class_holdout_count(count, fraction) == expected
    if count >= 2 and fraction > 0:
        assert 1 <= expected <= count - 1
        assert expected == min(max(math.floor(fraction * count + 0.5), 1), count - 1)


def test_split_is_stratified_disjoint_and_complete():
    counts = [50, 13, 7, 2, 1]
    y = labels_with_counts(counts)
    train, val = validation_split(y, 0.2, seed=3)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(y)))
    per_class = np.bincount(y[val], minlength=len(counts))
    # 50*0.2=10, 13*0.2=2.6->3, 7*0.2=1.4->1, 2*0.2=0.4->0 raised to 1, a class of 1 keeps its image
    assert per_class.tolist() == [10, 3, 1, 1, 0]
    assert np.bincount(y[train], minlength=len(counts)).tolist() == [40, 10, 6, 1, 1]


def test_same_seed_same_indices_other_seed_differs():
    y = labels_with_counts([40, 40, 40], seed=1)
    a = validation_split(y, 0.25, seed=7)
    b = validation_split(y.copy(), 0.25, seed=7)
    np.testing.assert_array_equal(a[1], b[1])
    c = validation_split(y, 0.25, seed=8)
    assert not np.array_equal(a[1], c[1])
    # independent of the global NumPy state
    np.random.seed(123)
    np.testing.assert_array_equal(validation_split(y, 0.25, seed=7)[1], a[1])


def test_zero_fraction_and_bad_input():
    y = labels_with_counts([5, 5])
    train, val = validation_split(y, 0.0, seed=0)
    assert val.size == 0 and train.tolist() == list(range(10))
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(ValueError, match="fraction must be a number in \\[0, 1\\)"):
            validation_split(y, bad)
    with pytest.raises(ValueError, match="integer labels"):
        validation_split(y.astype(np.float32), 0.1)


def tiny_dataset(x_val=None, y_val=None):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 1, 2, 2), dtype=np.uint8)
    y = np.repeat(np.arange(4), 5).astype(np.int64)
    return Dataset("tiny", x, y, x[:3], y[:3], ["a", "b", "c", "d"], x_val=x_val, y_val=y_val)


def test_with_validation_moves_images_out_of_train():
    ds = tiny_dataset()
    assert not ds.has_validation and ds.x_val is None and ds.y_val is None
    split = ds.with_validation(0.2, seed=5)
    train_idx, val_idx = validation_split(ds.y_train, 0.2, seed=5)
    np.testing.assert_array_equal(split.x_val, ds.x_train[val_idx])
    np.testing.assert_array_equal(split.y_val, ds.y_train[val_idx])
    np.testing.assert_array_equal(split.x_train, ds.x_train[train_idx])
    assert split.has_validation and np.bincount(split.y_val).tolist() == [1, 1, 1, 1]
    assert split.x_train.shape == (16, 1, 2, 2) and ds.x_train.shape == (20, 1, 2, 2)  # original untouched
    assert ds.with_validation(0.0) is ds


def test_shipped_validation_wins():
    shipped = tiny_dataset(np.zeros((2, 1, 2, 2), np.uint8), np.array([0, 1]))
    assert shipped.with_validation(0.5, seed=1) is shipped
    with pytest.raises(ValueError, match="fraction must be a number in"):
        shipped.with_validation(1.5)


def test_dataset_validates_val_arrays():
    with pytest.raises(ValueError, match="x_val and y_val must both be"):
        tiny_dataset(np.zeros((2, 1, 2, 2), np.uint8), None)
    with pytest.raises(ValueError, match="y_val must have shape \\(2,\\)"):
        tiny_dataset(np.zeros((2, 1, 2, 2), np.uint8), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="validation images"):
        tiny_dataset(np.zeros((2, 1, 3, 2), np.uint8), np.zeros(2, np.int64))


def test_digits_validation_split_is_stratified():
    ds = load_dataset("digits").with_validation(0.1, seed=0)
    counts = np.bincount(load_dataset("digits").y_train, minlength=10)
    expected = [math.floor(0.1 * n + 0.5) for n in counts]
    assert np.bincount(ds.y_val, minlength=10).tolist() == expected
    assert ds.x_train.shape[0] + ds.x_val.shape[0] == 1438
