"""NumPy ops: contract details (dtypes, argmax, padding, divisor, dropout hash, erf) and PyTorch agreement."""

import math

import numpy as np
import pytest

from gpucnn.ops import ACTIVATIONS, ALL_OPS
from gpucnn.ops import numpy_ops as ops


def test_every_contract_op_exists():
    assert [name for name in ALL_OPS if not callable(getattr(ops, name, None))] == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ops_keep_dtype(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = np.zeros(4, dtype)
    y = ops.conv2d_forward(x, w, b, (1, 1), (1, 1))
    assert y.dtype == dtype
    assert ops.conv2d_backward_data(y, w, x.shape, (1, 1), (1, 1)).dtype == dtype
    assert ops.conv2d_backward_filter(y, x, w.shape, (1, 1), (1, 1)).dtype == dtype
    yp, _ = ops.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    assert yp.dtype == dtype
    assert ops.maxpool2d_backward(yp, ops.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))[1], x.shape).dtype == dtype
    assert ops.avgpool2d_forward(x, (3, 3), (2, 2), (1, 1)).dtype == dtype
    for name in (a.name for a in ACTIVATIONS):
        y = getattr(ops, f"{name}_forward")(x)
        assert y.dtype == dtype, name
        assert getattr(ops, f"{name}_backward")(x, y).dtype == dtype, name
    assert ops.dropout_forward(x, 0.5, 3)[0].dtype == dtype
    loss, probs = ops.softmax_cross_entropy_forward(x.reshape(2, -1), np.array([0, 1]), 0.1)
    assert loss.dtype == dtype and loss.shape == () and probs.dtype == dtype
    assert ops.batchnorm2d_forward(x, np.ones(3, dtype), np.zeros(3, dtype), 1e-5)[0].dtype == dtype


def test_maxpool_padding_is_minus_infinity_and_argmax_in_plane():
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # all negative: zero padding would win
    y, arg = ops.maxpool2d_forward(x, (2, 2), (2, 2), (1, 1))
    np.testing.assert_array_equal(y[0, 0], [[-1, -2], [-4, -5]])
    np.testing.assert_array_equal(arg[0, 0], [[0, 1], [3, 4]])
    assert arg.dtype == np.int32


def test_avgpool_divides_by_full_window_including_padding():
    x = np.ones((1, 1, 2, 2))
    y = ops.avgpool2d_forward(x, (3, 3), (1, 1), (1, 1))
    np.testing.assert_allclose(y[0, 0], np.full((2, 2), 4 / 9))
    dx = ops.avgpool2d_backward(np.ones((1, 1, 2, 2)), x.shape, (3, 3), (1, 1), (1, 1))
    np.testing.assert_allclose(dx[0, 0], np.full((2, 2), 4 / 9))


def python_lowbias32(x):
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def test_lowbias32_matches_pure_python():
    values = [0, 1, 2, 255, 65535, 0x12345678, 0xFFFFFFFF, 2**31]
    np.testing.assert_array_equal(ops.lowbias32(np.array(values, dtype=np.uint32)), [python_lowbias32(v) for v in values])


def test_dropout_mask_follows_the_shared_hash():
    x = np.ones((3, 5, 7), dtype=np.float32)
    p, seed = 0.25, 0xDEADBEEF
    y, mask = ops.dropout_forward(x, p, seed)
    for i in range(x.size):
        u = (python_lowbias32(python_lowbias32(i) ^ seed) >> 8) * 2.0**-24
        assert mask.ravel()[i] == (np.float32(1 / (1 - p)) if u >= p else 0.0)
    np.testing.assert_array_equal(y, x * mask)
    assert 0.1 < (mask == 0).mean() < 0.4
    np.testing.assert_array_equal(ops.dropout_backward(np.full_like(x, 2), mask), 2 * mask)
    other, _ = ops.dropout_forward(x, p, seed + 1)
    assert not np.array_equal(other, y)


def test_erf_matches_math_erf_to_float64_precision():
    xs = np.concatenate([np.linspace(-7, 7, 4001), np.geomspace(1e-12, 30, 500), -np.geomspace(1e-12, 30, 500)])
    got = ops.erf_np(xs)
    want = np.array([math.erf(v) for v in xs])
    assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300)) < 1e-14
    got_c = ops.erfc_np(xs)
    want_c = np.array([math.erfc(v) for v in xs])
    ok = want_c > 0
    assert np.max(np.abs(got_c[ok] - want_c[ok]) / want_c[ok]) < 1e-12


def test_gelu_exact_values():
    xs = np.array([-3.0, -1.0, -1e-3, 0.0, 0.5, 2.0, 6.0])
    want = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in xs]
    np.testing.assert_allclose(ops.gelu_forward(xs), want, rtol=1e-14, atol=1e-300)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss, probs = ops.softmax_cross_entropy_forward(logits, np.array([0, 2]), 0.0)
    assert float(loss) == pytest.approx(math.log(3) / 2)
    assert np.all(np.isfinite(probs))


def test_mse_value_and_gradient():
    pred, target = np.array([[1.0, 2.0], [3.0, 5.0]]), np.array([[0.0, 2.0], [1.0, 5.0]])
    assert float(ops.mse_forward(pred, target)) == pytest.approx((1 + 0 + 4 + 0) / 4)
    np.testing.assert_allclose(ops.mse_backward(pred, target), [[0.5, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_update_in_place(nesterov):
    param, grad, v = np.array([1.0, -2.0]), np.array([0.5, 0.25]), np.array([0.1, 0.2])
    ops.sgd_update(param, grad, v, 0.1, 0.9, nesterov, 0.01)
    g = np.array([0.5 + 0.01, 0.25 - 0.02])
    v_new = 0.9 * np.array([0.1, 0.2]) + g
    step = g + 0.9 * v_new if nesterov else v_new
    np.testing.assert_allclose(v, v_new)
    np.testing.assert_allclose(param, np.array([1.0, -2.0]) - 0.1 * step)
    plain = np.array([1.0])
    ops.sgd_update(plain, np.array([2.0]), None, 0.5, 0.0, False, 0.0)
    assert plain[0] == 0.0


def test_batchnorm_inference_uses_running_stats():
    x = np.arange(8.0).reshape(1, 2, 2, 2)
    y = ops.batchnorm2d_inference(x, np.array([2.0, 1.0]), np.array([0.0, 1.0]), np.array([1.0, 0.0]), np.array([4.0, 1.0]), 0.0)
    np.testing.assert_allclose(y[0, 0], (x[0, 0] - 1) / 2 * 2)
    np.testing.assert_allclose(y[0, 1], x[0, 1] + 1)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_torch(smoothing):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((5, 7)), rng.integers(0, 7, 5)
    t = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.tensor(labels), label_smoothing=smoothing)
    ref.backward()
    loss, probs = ops.softmax_cross_entropy_forward(logits, labels, smoothing)
    assert float(loss) == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(ops.softmax_cross_entropy_backward(probs, labels, smoothing), t.grad.numpy(), atol=1e-14)


def test_conv_and_pool_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), stride=(2, 1), padding=(1, 1))
    np.testing.assert_allclose(ops.conv2d_forward(x, w, b, (2, 1), (1, 1)), ref.numpy(), atol=1e-12)
    ref_y, ref_idx = torch.nn.functional.max_pool2d(torch.tensor(x), 3, 2, 1, return_indices=True)
    y, arg = ops.maxpool2d_forward(x, (3, 3), (2, 2), (1, 1))
    np.testing.assert_array_equal(y, ref_y.numpy())
    np.testing.assert_array_equal(arg, ref_idx.numpy())
    ref_avg = torch.nn.functional.avg_pool2d(torch.tensor(x), 3, 2, 1, count_include_pad=True)
    np.testing.assert_allclose(ops.avgpool2d_forward(x, (3, 3), (2, 2), (1, 1)), ref_avg.numpy(), atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=[a.name for a in ACTIVATIONS])
def test_every_activation_matches_torch_forward_and_backward(activation):
    """Each op-table entry against torch.nn.functional's function of the same name (float64)."""
    torch = pytest.importorskip("torch")
    x = np.linspace(-6.0, 6.0, 241)
    x[np.abs(x) < 1e-9] = 0.25  # relu's kink
    dy = np.cos(3 * x)
    forward, backward = activation.ops
    y = getattr(ops, forward)(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch.nn.functional, activation.name)(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    cached = y if activation.cached == "output" else x
    np.testing.assert_allclose(getattr(ops, backward)(dy, cached), xt.grad.numpy(), rtol=1e-12, atol=1e-14)
    assert getattr(torch.nn, activation.layer)  # the layer class name is torch's module name
