"""The lecture seeds' worked examples, reproduced with their numbers."""

import numpy as np
import pytest

from gpucnn import layers, losses, optim
from gpucnn.model import Sequential
from gpucnn.ops import numpy_ops as ops

# seed 004: input o (5x5) and delta map d (4x4) of a 2x2 valid convolution
O = np.array(
    [
        [0.51, 0.9, 0.88, 0.84, 0.05],
        [0.4, 0.62, 0.22, 0.59, 0.1],
        [0.11, 0.2, 0.74, 0.33, 0.14],
        [0.47, 0.01, 0.85, 0.7, 0.09],
        [0.76, 0.19, 0.72, 0.17, 0.57],
    ]
)
D = np.array([[0, 0, 0.0686, 0], [0, 0.0364, 0, 0], [0, 0.0467, 0, 0], [0, 0, 0, -0.0681]])


def conv_layer_grads(o, d, kernel):
    conv = layers.Conv2D(1, 1, kernel, dtype=np.float64, rng=0)
    conv.forward(o[None, None])
    dx = conv.backward(d[None, None])
    return conv, dx


def test_seed004_filter_gradient_is_valid_correlation_of_o_with_d():
    conv, _ = conv_layer_grads(O, D, 2)
    expected = np.zeros((2, 2))
    for m in range(2):
        for n in range(2):
            for i in range(4):
                for j in range(4):
                    expected[m, n] += D[i, j] * O[i + m, j + n]
    np.testing.assert_allclose(conv.grads["W"][0, 0], expected, rtol=1e-12)
    # dE/dw[0,0] = 0.0686*o[0,2] + 0.0364*o[1,1] + 0.0467*o[2,1] - 0.0681*o[3,3]
    #            = 0.0686*0.88 + 0.0364*0.62 + 0.0467*0.20 - 0.0681*0.70
    #            = 0.060368 + 0.022568 + 0.009340 - 0.047670 = 0.044606
    assert conv.grads["W"][0, 0, 0, 0] == pytest.approx(0.044606, abs=1e-12)
    # dE/dw[1,1] = 0.0686*o[1,3] + 0.0364*o[2,2] + 0.0467*o[3,2] - 0.0681*o[4,4]
    #            = 0.040474 + 0.026936 + 0.039695 - 0.038817 = 0.068288
    assert conv.grads["W"][0, 0, 1, 1] == pytest.approx(0.068288, abs=1e-12)


def test_seed004_bias_gradient_is_sum_of_delta_map():
    conv, _ = conv_layer_grads(O, D, 2)
    # 0.0686 + 0.0364 + 0.0467 - 0.0681 = 0.0836
    assert conv.grads["b"][0] == pytest.approx(0.0836, abs=1e-12)
    assert conv.grads["b"][0] == pytest.approx(D.sum(), abs=1e-15)


def full_convolution_with_rotated_filter(delta, w, stride):
    """Seed 002: dilate the delta map by the stride, zero pad by K-1, valid-correlate with rot180(w)."""
    kh, kw = w.shape
    dil = np.zeros(((delta.shape[0] - 1) * stride + 1, (delta.shape[1] - 1) * stride + 1))
    dil[::stride, ::stride] = delta
    padded = np.pad(dil, ((kh - 1, kh - 1), (kw - 1, kw - 1)))
    rot = w[::-1, ::-1]
    out = np.zeros((padded.shape[0] - kh + 1, padded.shape[1] - kw + 1))
    for r in range(out.shape[0]):
        for q in range(out.shape[1]):
            out[r, q] = np.sum(padded[r : r + kh, q : q + kw] * rot)
    return out


@pytest.mark.parametrize("stride,size,kernel", [(1, 5, (2, 2)), (1, 7, (3, 2)), (2, 7, (3, 3)), (3, 10, (2, 4))])
def test_seed002_input_delta_is_full_convolution_with_rotated_filter(stride, size, kernel):
    rng = np.random.default_rng(stride)
    x = rng.standard_normal((1, 1, size, size))
    w = rng.standard_normal((1, 1, *kernel))
    y = ops.conv2d_forward(x, w, None, (stride, stride), (0, 0))
    delta = rng.standard_normal(y.shape)
    dx = ops.conv2d_backward_data(delta, w, x.shape, (stride, stride), (0, 0))
    expected = full_convolution_with_rotated_filter(delta[0, 0], w[0, 0], stride)
    # with stride the last rows/cols that no window reached get no delta (expected is then smaller)
    np.testing.assert_allclose(dx[0, 0, : expected.shape[0], : expected.shape[1]], expected, rtol=1e-12)
    assert np.all(dx[0, 0, expected.shape[0] :] == 0) and np.all(dx[0, 0, :, expected.shape[1] :] == 0)


def test_seed002_on_seed004_numbers_and_bias_identity():
    conv, dx = conv_layer_grads(O, D, 2)
    w = conv.params["W"][0, 0]
    np.testing.assert_allclose(dx[0, 0], full_convolution_with_rotated_filter(D, w, 1), rtol=1e-12)
    # corner entry: only y[0,0] reads x[0,0], through w[0,0]; d[0,0] = 0 so it is 0
    assert dx[0, 0, 0, 0] == 0.0
    # x[0,2] feeds y[0,1] (via w[0,1]) and y[0,2] (via w[0,0]); d[0,1] = 0, d[0,2] = 0.0686
    assert dx[0, 0, 0, 2] == pytest.approx(0.0686 * w[0, 0], abs=1e-15)
    np.testing.assert_allclose(conv.grads["b"], [D.sum()])


def test_seed001_softmax_gradient_p_minus_onehot():
    logits = np.log(np.array([[0.3, 0.7]]))  # p = (0.3, 0.7), target is the second class
    loss_fn = losses.SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, np.array([1]))
    assert float(loss) == pytest.approx(-np.log(0.7), rel=1e-12)  # 0.3567
    np.testing.assert_allclose(loss_fn.backward(), [[0.3, -0.3]], atol=1e-12)


def test_seed001_delta_rule_updates_through_sgd_weight_decay():
    """w <- w - alpha (dL/dw + lambda w) with alpha = lambda = 0.1 and w = 0.1."""
    dense = layers.Dense(3, 1, dtype=np.float64, rng=0)
    model = Sequential([dense])
    dense.set_param("W", [[0.1, 0.1, 0.1]])
    dense.set_param("b", [0.5])
    dense.grads["W"] = np.array([[-0.49 * 0.49, -0.0147, 0.0]])
    dense.grads["b"] = np.array([0.0])
    optim.SGD(model, lr=0.1, weight_decay=0.1).step()
    delta_w = dense.params["W"][0] - 0.1
    # -0.1 * (-0.49*0.49 + 0.1*0.1) = -0.1 * (-0.2401 + 0.01) = 0.02301 (seed: 0.023)
    assert delta_w[0] == pytest.approx(0.02301, abs=1e-12)
    assert round(delta_w[0], 3) == 0.023
    # -0.1 * (-0.0147 + 0.1*0.1) = 0.00047
    assert delta_w[1] == pytest.approx(0.00047, abs=1e-12)
    # -0.1 * (0 + 0.1*0.1) = -0.001
    assert delta_w[2] == pytest.approx(-0.001, abs=1e-12)
    assert dense.params["b"][0] == 0.5  # biases get no weight decay


def test_seed001_inner_weight_update_through_sigmoid():
    """dL/dw5 = (0.3*w1 - 0.3*w2 summed as -0.49*0.1 + 0.49*0.2) * f(1-f) * Out_A, f = 0.49, Out_A = 0.1."""
    upstream = np.array([-0.49 * 0.1 + 0.49 * 0.2])
    grad = ops.sigmoid_backward(upstream, np.array([0.49])) * 0.1
    dense = layers.Dense(1, 1, dtype=np.float64, bias=False, rng=0)
    dense.set_param("W", [[-0.1]])
    dense.grads["W"] = grad.reshape(1, 1)
    optim.SGD(Sequential([dense]), lr=0.1, weight_decay=0.1).step()
    # -0.1 * (0.049 * 0.2499 * 0.1 + 0.1*(-0.1)) = -0.1 * (0.00122451 - 0.01) = 0.000877549 (seed: 0.000878)
    assert dense.params["W"][0, 0] + 0.1 == pytest.approx(0.000877549, abs=1e-12)


def test_seed001_one_dimensional_filter_gradient():
    """dL/dw2 = d1*In2 + d2*In3 + d3*In4 + d4*In5 = 0*1 + (-0.0147)*0 + 0.0196*0 + 0.0196*0 = 0."""
    x = np.array([5.0, 1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 5)  # In1 unused by dw2; In2..In5 = 1, 0, 0, 0
    delta = np.array([0.0, -0.0147, 0.0196, 0.0196]).reshape(1, 1, 1, 4)
    dw = ops.conv2d_backward_filter(delta, x, (1, 1, 1, 2), (1, 1), (0, 0))
    assert dw[0, 0, 0, 1] == 0.0
    # dL/dw1 = 0*5 + (-0.0147)*1 + 0.0196*0 + 0.0196*0 = -0.0147
    assert dw[0, 0, 0, 0] == pytest.approx(-0.0147, abs=1e-15)
