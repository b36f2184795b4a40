"""The vectorized NumPy conv and max-pool agree with naive loops written from the seed formulas."""

import numpy as np
import pytest

import naive_reference as ref
from gpucnn.ops import numpy_ops as ops

CONV_CASES = [
    # N, C, H, W, O, KH, KW, stride, padding
    (1, 1, 5, 5, 1, 2, 2, (1, 1), (0, 0)),
    (2, 3, 7, 6, 4, 3, 3, (1, 1), (1, 1)),
    (1, 2, 9, 8, 3, 3, 2, (2, 2), (0, 1)),
    (2, 2, 10, 11, 2, 4, 3, (3, 2), (1, 0)),
    (3, 1, 6, 6, 2, 1, 1, (2, 3), (0, 0)),
    (1, 3, 8, 7, 2, 5, 5, (3, 3), (2, 2)),
    (2, 4, 5, 9, 3, 2, 4, (1, 2), (1, 2)),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_naive_loops(case):
    n, c, h, w, o, kh, kw, stride, padding = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((o, c, kh, kw))
    b = rng.standard_normal(o)
    y = ops.conv2d_forward(x, wt, b, stride, padding)
    np.testing.assert_allclose(y, ref.conv_forward(x, wt, b, stride, padding), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(
        ops.conv2d_backward_data(dy, wt, x.shape, stride, padding),
        ref.conv_backward_data(dy, wt, x.shape, stride, padding),
        rtol=1e-12,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        ops.conv2d_backward_filter(dy, x, wt.shape, stride, padding),
        ref.conv_backward_filter(dy, x, wt.shape, stride, padding),
        rtol=1e-12,
        atol=1e-12,
    )
    np.testing.assert_allclose(ops.conv2d_backward_bias(dy), ref.conv_backward_bias(dy), rtol=1e-12)


def test_conv_without_bias_matches_naive():
    rng = np.random.default_rng(1)
    x, wt = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    np.testing.assert_allclose(
        ops.conv2d_forward(x, wt, None, (1, 1), (1, 1)), ref.conv_forward(x, wt, None, (1, 1), (1, 1)), atol=1e-12
    )


POOL_CASES = [
    # N, C, H, W, kernel, stride, padding
    (1, 1, 4, 4, (2, 2), (2, 2), (0, 0)),
    (2, 3, 7, 7, (3, 3), (1, 1), (0, 0)),
    (2, 2, 9, 8, (3, 3), (2, 2), (1, 1)),
    (1, 2, 7, 9, (2, 3), (2, 3), (1, 1)),
    (3, 1, 5, 6, (3, 2), (1, 2), (1, 0)),
    (1, 1, 6, 6, (2, 2), (3, 3), (0, 0)),
]


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("integer_values", [False, True], ids=["distinct", "many-ties"])
def test_maxpool_matches_naive_loops(case, integer_values):
    n, c, h, w, kernel, stride, padding = case
    rng = np.random.default_rng(7)
    if integer_values:
        x = rng.integers(-2, 3, (n, c, h, w)).astype(np.float64)  # many tied maxima
    else:
        x = rng.standard_normal((n, c, h, w))
    y, arg = ops.maxpool2d_forward(x, kernel, stride, padding)
    y_ref, arg_ref = ref.maxpool_forward(x, kernel, stride, padding)
    assert arg.dtype == np.int32
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(
        ops.maxpool2d_backward(dy, arg, x.shape), ref.maxpool_backward(dy, arg_ref, x.shape), rtol=1e-12, atol=1e-14
    )
