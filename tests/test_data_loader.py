"""BatchLoader and Augment: shapes, normalization, epoch coverage, reproducibility, flip/crop."""

import numpy as np
import pytest

from gpucnn.data import Augment, BatchLoader
from gpucnn.data.augment import gather_augmented

MEAN = np.array([0.49, 0.48, 0.45])
STD = np.array([0.25, 0.24, 0.26])


def make_data(n=37, c=3, h=6, w=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8), np.arange(n) % 10


def reference_normalize(x_uint8, mean=MEAN, std=STD):
    return (x_uint8.astype(np.float64) / 255 - mean[None, :, None, None]) / std[None, :, None, None]


def reference_augment(image, flip, dy, dx, pad, mode):
    """One image (C, H, W): mirror, pad with np.pad, cut the window at (dy, dx)."""
    if flip:
        image = image[:, :, ::-1]
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode="constant" if mode == "zeros" else "reflect")
    return padded[:, dy : dy + image.shape[1], dx : dx + image.shape[2]]


def collect(loader):
    xs, ys = zip(*[(x, y) for x, y in loader])
    return np.concatenate(xs), np.concatenate(ys)


def test_shapes_dtypes_and_len(numpy_backend):
    x, y = make_data()
    loader = BatchLoader(x, y, 8, numpy_backend, MEAN, STD)
    assert len(loader) == 5
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(8, 3, 6, 5)] * 4 + [(5, 3, 6, 5)]
    assert all(bx.dtype == np.float32 and by.dtype == np.int32 and by.shape == (bx.shape[0],) for bx, by in batches)
    dropping = BatchLoader(x, y, 8, numpy_backend, MEAN, STD, drop_last=True)
    assert len(dropping) == 4 and [b[0].shape[0] for b in dropping] == [8] * 4
    assert len(BatchLoader(x, y, 37, numpy_backend, MEAN, STD)) == 1


def test_normalization_values(numpy_backend):
    x, y = make_data()
    loader = BatchLoader(x, y, 10, numpy_backend, MEAN, STD, shuffle=False)
    got_x, got_y = collect(loader)
    np.testing.assert_allclose(got_x, reference_normalize(x), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(got_y, y)
    # a worked value: pixel 255 in channel 0 -> (1 - 0.49) / 0.25 = 2.04
    x[0, 0, 0, 0] = 255
    first_x, _ = next(iter(BatchLoader(x, y, 4, numpy_backend, MEAN, STD, shuffle=False)))
    assert first_x[0, 0, 0, 0] == pytest.approx(2.04, abs=1e-6)


def test_every_sample_once_per_epoch_and_epochs_differ(numpy_backend):
    x, _ = make_data(n=50)
    ids = np.arange(50)
    loader = BatchLoader(x, ids, 16, numpy_backend, MEAN, STD, seed=5)
    orders = []
    for _ in range(3):
        got_x, got_y = collect(loader)
        assert sorted(got_y.tolist()) == list(range(50))
        np.testing.assert_allclose(got_x, reference_normalize(x[got_y]), atol=2e-6)  # labels travel with images
        orders.append(got_y)
    assert loader.epoch == 3
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    assert not np.array_equal(orders[0], ids)


def test_drop_last_skips_the_tail_of_a_shuffled_epoch(numpy_backend):
    x, _ = make_data(n=10)
    loader = BatchLoader(x, np.arange(10), 4, numpy_backend, MEAN, STD, seed=1, drop_last=True)
    _, got = collect(loader)
    assert len(got) == 8 and len(set(got.tolist())) == 8


@pytest.mark.parametrize("augment", [None, Augment(), Augment(flip=True, crop_padding=2, padding_mode="reflect")])
def test_reproducible_from_seed_and_epoch(numpy_backend, augment):
    x, y = make_data()
    a = BatchLoader(x, y, 8, numpy_backend, MEAN, STD, seed=11, augment=augment)
    b = BatchLoader(x, y, 8, numpy_backend, MEAN, STD, seed=11, augment=augment)
    first_a = collect(a)  # epoch 0
    b.set_epoch(0)
    first_b = collect(b)
    second_a = collect(a)  # epoch 1
    b.set_epoch(1)
    second_b = collect(b)
    for u, v in ((first_a, first_b), (second_a, second_b)):
        assert np.array_equal(u[0], v[0]) and np.array_equal(u[1], v[1])  # bit for bit
    assert not np.array_equal(first_a[0], second_a[0])
    other_seed = BatchLoader(x, y, 8, numpy_backend, MEAN, STD, seed=12, augment=augment)
    assert not np.array_equal(collect(other_seed)[0], first_a[0])


def test_flip_and_zero_crop_worked_example(numpy_backend):
    image = np.arange(1, 13, dtype=np.uint8).reshape(1, 1, 3, 4)  # rows [1 2 3 4] [5 6 7 8] [9 10 11 12]
    xp = numpy_backend.xp
    idx = np.array([0, 0, 0])
    flip = np.array([True, False, True])
    dy, dx = np.array([1, 0, 2]), np.array([1, 0, 0])
    out = gather_augmented(xp, image, idx, flip, dy, dx, padding=1, mode="zeros")
    np.testing.assert_array_equal(out[0, 0], [[4, 3, 2, 1], [8, 7, 6, 5], [12, 11, 10, 9]])  # centre: pure flip
    np.testing.assert_array_equal(out[1, 0], [[0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7]])  # shifted down-right
    np.testing.assert_array_equal(out[2, 0], [[0, 8, 7, 6], [0, 12, 11, 10], [0, 0, 0, 0]])  # flipped, up-right
    assert out.dtype == np.uint8


def test_reflect_worked_example(numpy_backend):
    image = np.arange(1, 13, dtype=np.uint8).reshape(1, 1, 3, 4)
    out = gather_augmented(numpy_backend.xp, image, np.array([0]), np.array([False]), np.array([0]),
                           np.array([0]), padding=2, mode="reflect")
    np.testing.assert_array_equal(out[0, 0], [[11, 10, 9, 10], [7, 6, 5, 6], [3, 2, 1, 2]])


@pytest.mark.parametrize("mode, pad", [("zeros", 4), ("zeros", 1), ("reflect", 3)])
def test_augmented_batches_match_per_image_reference(numpy_backend, mode, pad):
    x, y = make_data(n=40, h=7, w=6)
    augment = Augment(flip=True, crop_padding=pad, padding_mode=mode)
    loader = BatchLoader(x, y, 16, numpy_backend, MEAN, STD, seed=3, augment=augment)
    loader.set_epoch(2)
    got_x, _ = collect(loader)
    order, params = loader.epoch_plan(2)
    assert 0 < params.flip.sum() < 40 and params.dy.min() >= 0 and params.dy.max() <= 2 * pad
    expected = np.stack([reference_augment(x[i], params.flip[k], params.dy[k], params.dx[k], pad, mode)
                         for k, i in enumerate(order)])
    np.testing.assert_allclose(got_x, reference_normalize(expected), atol=2e-6)


def test_augment_draws_are_balanced():
    params = Augment(crop_padding=4).draw(np.random.default_rng(0), 20000)
    assert abs(params.flip.mean() - 0.5) < 0.02
    assert set(np.unique(params.dy)) == set(range(9)) and set(np.unique(params.dx)) == set(range(9))
    no_crop = Augment(flip=False, crop_padding=0).draw(np.random.default_rng(0), 5)
    assert not no_crop.flip.any() and not no_crop.dy.any() and not no_crop.dx.any()


def test_argument_errors(numpy_backend):
    x, y = make_data()
    with pytest.raises(ValueError, match="x must be non-empty .* uint8"):
        BatchLoader(x.astype(np.float32), y, 4, numpy_backend, MEAN, STD)
    with pytest.raises(ValueError, match=r"y must be \(37,\) integers"):
        BatchLoader(x, y[:-1], 4, numpy_backend, MEAN, STD)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        BatchLoader(x, y, 0, numpy_backend, MEAN, STD)
    with pytest.raises(ValueError, match=r"mean must be \(3,\)"):
        BatchLoader(x, y, 4, numpy_backend, MEAN[:2], STD)
    with pytest.raises(ValueError, match="std must be > 0"):
        BatchLoader(x, y, 4, numpy_backend, MEAN, [0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match="drop_last .* leaves no batch"):
        BatchLoader(x, y, 64, numpy_backend, MEAN, STD, drop_last=True)
    with pytest.raises(ValueError, match="reflect padding 6 needs images larger"):
        BatchLoader(x, y, 4, numpy_backend, MEAN, STD, augment=Augment(crop_padding=6, padding_mode="reflect"))
    with pytest.raises(ValueError, match="padding_mode must be one of zeros, reflect"):
        Augment(padding_mode="edge")
    with pytest.raises(ValueError, match="crop_padding must be an int >= 0"):
        Augment(crop_padding=-1)
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        BatchLoader(x, y, 4, numpy_backend, MEAN, STD).set_epoch(-1)


def test_default_backend_and_identity_normalization(numpy_backend):
    x, y = make_data(n=4)
    loader = BatchLoader(x, y, 4, shuffle=False)
    assert loader.backend is numpy_backend
    got, _ = next(iter(loader))
    np.testing.assert_allclose(got, x / 255.0, atol=1e-7)


@pytest.mark.gpu
def test_cuda_matches_numpy_bit_for_bit(cuda_backend):
    from gpucnn.backend import create_backend

    x, y = make_data(n=70, h=32, w=32)
    augment = Augment(crop_padding=4)
    gpu = BatchLoader(x, y, 32, cuda_backend, MEAN, STD, seed=4, augment=augment)
    cpu = BatchLoader(x, y, 32, create_backend("numpy"), MEAN, STD, seed=4, augment=augment)
    for (gx, gy), (cx, cy) in zip(gpu, cpu):
        np.testing.assert_array_equal(cuda_backend.to_host(gx), cx)
        np.testing.assert_array_equal(cuda_backend.to_host(gy), cy)
