"""Central-difference gradient checks in float64 for every layer and both losses.

Each check uses the scalar L = sum(layer(x) * R) for a fixed random R, so dL/dy = R,
and compares the layer's backward with (L(v + h) - L(v - h)) / 2h at every entry.
"""

import numpy as np
import pytest

from gpucnn import layers, losses

from finite_differences import numeric_grad, relative_error

TOL = 1e-6


def check_layer(layer, x, training=True, reset=lambda: None):
    rng = np.random.default_rng(123)
    reset()
    r = rng.standard_normal(layer.forward(x, training=training).shape)

    def loss():
        reset()
        return float(np.sum(layer.forward(x, training=training) * r))

    reset()
    layer.forward(x, training=training)
    dx = layer.backward(r)
    analytic = {name: np.array(g) for name, g in layer.grads.items()}
    assert dx.dtype == np.float64 and dx.shape == x.shape
    assert relative_error(dx, numeric_grad(loss, x)) < TOL
    for name, p in layer.params.items():
        assert relative_error(analytic[name], numeric_grad(loss, p)) < TOL, name


CONV_CASES = [
    # N, C, H, W, O, kernel, stride, padding
    (1, 1, 5, 5, 1, 2, 1, 0),
    (2, 3, 7, 6, 2, (3, 2), 1, 1),
    (1, 2, 9, 7, 3, 3, 2, (1, 0)),
    (2, 2, 10, 8, 2, (2, 3), 3, 1),
    (1, 1, 6, 5, 2, (1, 3), (2, 1), (0, 1)),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients(case):
    n, c, h, w, o, kernel, stride, padding = case
    rng = np.random.default_rng(0)
    layer = layers.Conv2D(c, o, kernel, stride=stride, padding=padding, dtype=np.float64, rng=rng)
    layer.params["b"][...] = rng.standard_normal(o)
    check_layer(layer, rng.standard_normal((n, c, h, w)))


@pytest.mark.parametrize("batch", [1, 3])
def test_dense_gradients(batch):
    rng = np.random.default_rng(1)
    layer = layers.Dense(7, 5, dtype=np.float64, rng=rng)
    layer.params["b"][...] = rng.standard_normal(5)
    check_layer(layer, rng.standard_normal((batch, 7)))


POOL_CASES = [
    # N, C, H, W, kernel, stride, padding
    (1, 1, 4, 4, 2, None, 0),
    (2, 2, 7, 7, 3, 1, 0),  # overlapping windows
    (1, 2, 9, 8, 3, 2, 1),  # overlapping, padded
    (2, 1, 7, 9, (2, 3), (3, 2), (1, 1)),
]


@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool_gradients(case):
    n, c, h, w, kernel, stride, padding = case
    rng = np.random.default_rng(2)
    # distinct values at least 1e-3 apart so the +-h probes never change a window's argmax
    x = rng.permutation(n * c * h * w).reshape(n, c, h, w) * 1e-3 + rng.uniform(0, 1e-4, (n, c, h, w))
    check_layer(layers.MaxPool2D(kernel, stride, padding), x)


@pytest.mark.parametrize("case", POOL_CASES)
def test_avgpool_gradients(case):
    n, c, h, w, kernel, stride, padding = case
    rng = np.random.default_rng(3)
    check_layer(layers.AvgPool2D(kernel, stride, padding), rng.standard_normal((n, c, h, w)))


def test_maxpool_ties_route_to_first_max_in_row_major_order():
    x = np.array(
        [[[[1.0, 5.0, 5.0, 0.0],
           [5.0, 2.0, 3.0, 5.0],
           [0.0, 7.0, 7.0, 7.0],
           [7.0, 7.0, 1.0, 2.0]]]]
    )
    pool = layers.MaxPool2D(2)
    y = pool.forward(x)
    np.testing.assert_array_equal(y[0, 0], [[5.0, 5.0], [7.0, 7.0]])
    np.testing.assert_array_equal(pool._argmax[0, 0], [[1, 2], [9, 10]])
    dx = pool.backward(np.array([[[[10.0, 20.0], [30.0, 40.0]]]]))
    expected = np.zeros((4, 4))
    expected[0, 1], expected[0, 2], expected[2, 1], expected[2, 2] = 10, 20, 30, 40
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_overlapping_tied_maxima_accumulate_at_first_position():
    x = np.full((1, 1, 3, 3), 4.0)  # every window ties everywhere
    pool = layers.MaxPool2D(2, stride=1)
    pool.forward(x)
    np.testing.assert_array_equal(pool._argmax[0, 0], [[0, 1], [3, 4]])
    dx = pool.backward(np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize("cls", list(layers.ACTIVATION_LAYERS.values()), ids=list(layers.ACTIVATION_LAYERS))
def test_activation_gradients(cls):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 5, 3)) * 3
    if cls is layers.ReLU:
        x[np.abs(x) < 1e-3] = 0.5  # keep probes away from the kink
    check_layer(cls(), x)


def test_activations_stable_for_large_inputs():
    x = np.array([-800.0, -40.0, 0.0, 40.0, 800.0])
    for cls in layers.ACTIVATION_LAYERS.values():
        layer = cls()
        y = layer.forward(x)
        assert np.all(np.isfinite(y)), cls
        assert np.all(np.isfinite(layer.backward(np.ones_like(x)))), cls


def test_dropout_gradients_with_fixed_seed():
    rng = np.random.default_rng(5)
    layer = layers.Dropout(0.3)

    def reset():
        layer.next_seed = 12345

    check_layer(layer, rng.standard_normal((2, 3, 4, 5)), reset=reset)


def test_batchnorm_train_mode_gradients():
    rng = np.random.default_rng(6)
    layer = layers.BatchNorm2D(3, dtype=np.float64)
    layer.params["gamma"][...] = rng.uniform(0.5, 1.5, 3)
    layer.params["beta"][...] = rng.standard_normal(3)
    check_layer(layer, rng.standard_normal((2, 3, 3, 5)) * 2 + 1)


def test_batchnorm_batch_one_gradients():
    rng = np.random.default_rng(7)
    layer = layers.BatchNorm2D(2, dtype=np.float64)
    check_layer(layer, rng.standard_normal((1, 2, 3, 3)))


def test_flatten_gradients():
    rng = np.random.default_rng(8)
    check_layer(layers.Flatten(), rng.standard_normal((2, 3, 2, 3)))


def check_loss(loss_fn, pred, target):
    loss_fn.forward(pred, target)
    analytic = loss_fn.backward()
    numeric = numeric_grad(lambda: float(loss_fn.forward(pred, target)), pred)
    assert relative_error(analytic, numeric) < TOL


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.35])
@pytest.mark.parametrize("batch", [1, 4])
def test_softmax_cross_entropy_gradients(smoothing, batch):
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((batch, 6)) * 3
    labels = rng.integers(0, 6, batch)
    check_loss(losses.SoftmaxCrossEntropy(label_smoothing=smoothing), logits, labels)


def test_mse_gradients():
    rng = np.random.default_rng(10)
    check_loss(losses.MeanSquaredError(), rng.standard_normal((3, 4)), rng.standard_normal((3, 4)))
