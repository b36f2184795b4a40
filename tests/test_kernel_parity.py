"""Every op of the kernel backends (emulated always, cuda on a GPU) against numpy_ops.

Inputs are made on the host, copied to the backend, and the results copied back and
compared with the NumPy reference in float32. Every convolution variant is covered.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.ops import ACTIVATIONS, ALL_OPS
from gpucnn.ops import numpy_ops as ref
from gpucnn.ops.kernel_ops import VARIANTS

RTOL, ATOL = 2e-5, 2e-5



def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(backend, got, want, rtol=RTOL, atol=ATOL):
    got = backend.to_host(got)
    assert got.shape == np.shape(want), (got.shape, np.shape(want))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(1.0, float(np.max(np.abs(want), initial=0))))


def test_every_op_is_implemented(kb):
    missing = [op for op in ALL_OPS if not callable(getattr(kb.ops, op, None))]
    assert not missing


CONV_CASES = [
    # (N, C, H, W), (O, KH, KW), stride, padding
    ((2, 3, 9, 7), (5, 3, 2), (1, 1), (0, 0)),
    ((1, 2, 8, 8), (4, 3, 3), (2, 2), (1, 1)),
    ((2, 3, 11, 9), (3, 5, 3), (3, 2), (2, 1)),
    ((3, 1, 6, 5), (2, 1, 1), (1, 3), (0, 0)),
    ((1, 4, 7, 7), (70, 3, 3), (2, 1), (1, 0)),  # more than one 64-row tile of output channels
    ((2, 2, 5, 6), (3, 5, 6), (1, 1), (2, 3)),  # kernel as large as the padded input
]


@pytest.mark.parametrize("variant", VARIANTS["conv2d_forward"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}")
def test_conv2d_forward(kb, case, variant):
    (n, c, h, w), (o, kh, kw), stride, padding = case
    rng = np.random.default_rng(1)
    x, wt, b = randn(rng, n, c, h, w), randn(rng, o, c, kh, kw), randn(rng, o)
    kb.ops.set_variant("conv2d_forward", variant)
    for bias in (b, None):
        got = kb.ops.conv2d_forward(kb.asarray(x), kb.asarray(wt), None if bias is None else kb.asarray(bias),
                                    stride, padding)
        close(kb, got, ref.conv2d_forward(x, wt, bias, stride, padding))


@pytest.mark.parametrize("variant", VARIANTS["conv2d_backward_data"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}")
def test_conv2d_backward_data(kb, case, variant):
    (n, c, h, w), (o, kh, kw), stride, padding = case
    rng = np.random.default_rng(2)
    wt = randn(rng, o, c, kh, kw)
    y_shape = ref.conv2d_forward(np.zeros((n, c, h, w), np.float32), wt, None, stride, padding).shape
    dy = randn(rng, *y_shape)
    kb.ops.set_variant("conv2d_backward_data", variant)
    got = kb.ops.conv2d_backward_data(kb.asarray(dy), kb.asarray(wt), (n, c, h, w), stride, padding)
    close(kb, got, ref.conv2d_backward_data(dy, wt, (n, c, h, w), stride, padding))


@pytest.mark.parametrize("variant", VARIANTS["conv2d_backward_filter"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}")
def test_conv2d_backward_filter_and_bias(kb, case, variant):
    (n, c, h, w), (o, kh, kw), stride, padding = case
    if variant == "direct" and o * c * kh * kw > 400 and kb.name == "emulated":
        case = ((n, c, h, w), (5, kh, kw), stride, padding)  # one fiber block per tap: keep it small
        o = 5
    rng = np.random.default_rng(3)
    x = randn(rng, n, c, h, w)
    y_shape = ref.conv2d_forward(x, np.zeros((o, c, kh, kw), np.float32), None, stride, padding).shape
    dy = randn(rng, *y_shape)
    kb.ops.set_variant("conv2d_backward_filter", variant)
    got = kb.ops.conv2d_backward_filter(kb.asarray(dy), kb.asarray(x), (o, c, kh, kw), stride, padding)
    close(kb, got, ref.conv2d_backward_filter(dy, x, (o, c, kh, kw), stride, padding))
    close(kb, kb.ops.conv2d_backward_bias(kb.asarray(dy)), ref.conv2d_backward_bias(dy))


@pytest.mark.parametrize(
    "op, out_channels, reduction, expected",
    [
        ("conv2d_forward", 6, 75, "direct"),  # LeNet-5 conv1: thin GEMM
        ("conv2d_backward_data", 16, 150, "igemm"),
        ("conv2d_backward_filter", 16, 150, "igemm"),
        ("conv2d_forward", 128, 576, "im2col_gemm"),  # VGG 3x3, 64 -> 128: cuBLAS
        ("conv2d_backward_data", 128, 576, "gemm_col2im"),
        ("conv2d_backward_filter", 64, 27, "igemm"),  # reduction 3*3*3 too short for cuBLAS
    ],
)
def test_auto_variant_choice(kb, op, out_channels, reduction, expected):
    kb.ops.set_variant(op, "auto")
    assert kb.ops._pick(op, out_channels, reduction) == expected
    kb.ops.set_variant(op, "direct")
    assert kb.ops._pick(op, out_channels, reduction) == "direct"


@pytest.mark.parametrize("blocks", [1, 7, 64, 10**6])
def test_channel_sum_two_pass_matches_numpy(kb, blocks):
    """conv and dense bias gradients through the one-pass and the two-pass (partial sums) reductions."""
    rng = np.random.default_rng(11)
    kb.ops.channel_sum_blocks = blocks
    dy = randn(rng, 13, 3, 5, 7)
    close(kb, kb.ops.conv2d_backward_bias(kb.asarray(dy)), ref.conv2d_backward_bias(dy))
    x, w, dyd = randn(rng, 9, 4), randn(rng, 5, 4), randn(rng, 9, 5)
    got = kb.ops.dense_backward(kb.asarray(dyd), kb.asarray(x), kb.asarray(w))
    close(kb, got[2], ref.dense_backward(dyd, x, w)[2])


@pytest.mark.parametrize("min_chunks", [1, 8, 10**6])
def test_conv2d_backward_filter_igemm_split_k(kb, min_chunks):
    """The split-K path (several partial sums + splitk_reduce) and the single-split path."""
    rng = np.random.default_rng(4)
    x, dy = randn(rng, 3, 2, 12, 12), randn(rng, 3, 3, 12, 12)
    kb.ops.set_variant("conv2d_backward_filter", "igemm")
    kb.ops.min_chunks_per_split = min_chunks
    got = kb.ops.conv2d_backward_filter(kb.asarray(dy), kb.asarray(x), (3, 2, 3, 3), (1, 1), (1, 1))
    close(kb, got, ref.conv2d_backward_filter(dy, x, (3, 2, 3, 3), (1, 1), (1, 1)))


def test_conv2d_im2col_chunks_over_the_batch(kb):
    """A column-buffer budget smaller than the batch forces several GEMM chunks."""
    rng = np.random.default_rng(5)
    x, wt, b = randn(rng, 5, 2, 6, 6), randn(rng, 3, 2, 3, 3), randn(rng, 3)
    kb.ops.col_buffer_bytes = 2 * 18 * 36 * 4  # two images per chunk
    y = ref.conv2d_forward(x, wt, b, (1, 1), (1, 1))
    dy = randn(rng, *y.shape)
    close(kb, kb.ops.conv2d_forward(kb.asarray(x), kb.asarray(wt), kb.asarray(b), (1, 1), (1, 1)), y)
    close(kb, kb.ops.conv2d_backward_data(kb.asarray(dy), kb.asarray(wt), x.shape, (1, 1), (1, 1)),
          ref.conv2d_backward_data(dy, wt, x.shape, (1, 1), (1, 1)))
    close(kb, kb.ops.conv2d_backward_filter(kb.asarray(dy), kb.asarray(x), wt.shape, (1, 1), (1, 1)),
          ref.conv2d_backward_filter(dy, x, wt.shape, (1, 1), (1, 1)))


POOL_CASES = [
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0)),
    ((1, 2, 9, 7), (3, 3), (2, 2), (1, 1)),  # overlapping windows
    ((2, 1, 7, 10), (3, 2), (1, 2), (1, 0)),  # overlapping, non-square
    ((1, 2, 5, 5), (5, 5), (1, 1), (2, 2)),  # heavy overlap
    ((1, 1, 6, 9), (2, 3), (3, 1), (0, 1)),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}")
def test_maxpool(kb, case):
    shape, kernel, stride, padding = case
    rng = np.random.default_rng(6)
    x = randn(rng, *shape)
    y, argmax = ref.maxpool2d_forward(x, kernel, stride, padding)
    got_y, got_argmax = kb.ops.maxpool2d_forward(kb.asarray(x), kernel, stride, padding)
    close(kb, got_y, y, rtol=0, atol=0)
    assert kb.to_host(got_argmax).dtype == np.int32
    np.testing.assert_array_equal(kb.to_host(got_argmax), argmax)
    dy = randn(rng, *y.shape)
    close(kb, kb.ops.maxpool2d_backward(kb.asarray(dy), got_argmax, shape), ref.maxpool2d_backward(dy, argmax, shape))


def test_maxpool_ties_pick_the_first_maximum(kb):
    x = np.zeros((1, 1, 4, 4), np.float32)  # every window is a four-way tie
    x[0, 0, 3, 3] = -1.0
    y, argmax = ref.maxpool2d_forward(x, (2, 2), (1, 1), (0, 0))
    got_y, got_argmax = kb.ops.maxpool2d_forward(kb.asarray(x), (2, 2), (1, 1), (0, 0))
    np.testing.assert_array_equal(kb.to_host(got_argmax), argmax)
    np.testing.assert_array_equal(kb.to_host(got_argmax)[0, 0], [[0, 1, 2], [4, 5, 6], [8, 9, 10]])
    dy = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    dx = kb.to_host(kb.ops.maxpool2d_backward(kb.asarray(dy), got_argmax, x.shape))
    np.testing.assert_array_equal(dx, ref.maxpool2d_backward(dy, argmax, x.shape))


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}")
def test_avgpool(kb, case):
    shape, kernel, stride, padding = case
    rng = np.random.default_rng(7)
    x = randn(rng, *shape)
    y = ref.avgpool2d_forward(x, kernel, stride, padding)
    close(kb, kb.ops.avgpool2d_forward(kb.asarray(x), kernel, stride, padding), y)
    dy = randn(rng, *y.shape)
    close(kb, kb.ops.avgpool2d_backward(kb.asarray(dy), shape, kernel, stride, padding),
          ref.avgpool2d_backward(dy, shape, kernel, stride, padding))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (17, 33)])
def test_dense(kb, shape):
    n, i = shape
    rng = np.random.default_rng(8)
    x, w, b, dy = randn(rng, n, i), randn(rng, 5, i), randn(rng, 5), randn(rng, n, 5)
    close(kb, kb.ops.dense_forward(kb.asarray(x), kb.asarray(w), kb.asarray(b)), ref.dense_forward(x, w, b))
    close(kb, kb.ops.dense_forward(kb.asarray(x), kb.asarray(w), None), ref.dense_forward(x, w, None))
    for got, want in zip(kb.ops.dense_backward(kb.asarray(dy), kb.asarray(x), kb.asarray(w)),
                         ref.dense_backward(dy, x, w)):
        close(kb, got, want)


@pytest.mark.parametrize("name,cached", [(a.name, a.cached[0]) for a in ACTIVATIONS])
def test_activations(kb, name, cached):
    rng = np.random.default_rng(9)
    x = randn(rng, 3, 5, 7, scale=4.0)
    x.flat[:6] = [0.0, -0.0, 30.0, -30.0, 90.0, -90.0]  # zeros and saturating tails
    y = getattr(ref, f"{name}_forward")(x)
    got = getattr(kb.ops, f"{name}_forward")(kb.asarray(x))
    close(kb, got, y, rtol=4e-6, atol=1e-6)
    dy = randn(rng, *x.shape)
    c = y if cached == "o" else x  # "output" or "input"
    close(kb, getattr(kb.ops, f"{name}_backward")(kb.asarray(dy), kb.asarray(c)),
          getattr(ref, f"{name}_backward")(dy, c), rtol=4e-6, atol=1e-6)


@pytest.mark.parametrize("p,seed", [(0.0, 0), (0.3, 1), (0.5, 2**32 - 1), (0.9, 12345)])
def test_dropout_matches_the_shared_hash_exactly(kb, p, seed):
    rng = np.random.default_rng(10)
    x = randn(rng, 4, 3, 5, 6)
    y, mask = ref.dropout_forward(x, p, seed)
    got_y, got_mask = kb.ops.dropout_forward(kb.asarray(x), p, seed)
    np.testing.assert_array_equal(kb.to_host(got_mask), mask)
    np.testing.assert_array_equal(kb.to_host(got_y), y)
    dy = randn(rng, *x.shape)
    np.testing.assert_array_equal(kb.to_host(kb.ops.dropout_backward(kb.asarray(dy), got_mask)),
                                  ref.dropout_backward(dy, mask))


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("n,k", [(1, 2), (7, 10), (33, 5)])
def test_softmax_cross_entropy(kb, n, k, eps):
    rng = np.random.default_rng(11)
    logits = randn(rng, n, k, scale=5.0)
    logits[0, 0] = 80.0  # large logit: the log-sum-exp must not overflow
    labels = rng.integers(0, k, n)
    loss, probs = ref.softmax_cross_entropy_forward(logits, labels, eps)
    got_loss, got_probs = kb.ops.softmax_cross_entropy_forward(kb.asarray(logits), kb.asarray(labels), eps)
    assert got_loss.shape == ()
    close(kb, got_loss, loss)
    close(kb, got_probs, probs, atol=1e-6)
    for lab in (labels, labels.astype(np.int32)):
        close(kb, kb.ops.softmax_cross_entropy_backward(got_probs, kb.asarray(lab), eps),
              ref.softmax_cross_entropy_backward(probs, lab, eps), atol=1e-6)


def test_softmax_cross_entropy_bad_label_gives_nan(kb):
    logits = np.zeros((2, 3), np.float32)
    loss, _ = kb.ops.softmax_cross_entropy_forward(kb.asarray(logits), kb.asarray(np.array([0, 3])), 0.0)
    assert np.isnan(float(loss))


@pytest.mark.parametrize("shape", [(1,), (5, 3), (300, 7)])
def test_mse(kb, shape):
    rng = np.random.default_rng(12)
    pred, target = randn(rng, *shape), randn(rng, *shape)
    got = kb.ops.mse_forward(kb.asarray(pred), kb.asarray(target))
    assert got.shape == ()
    close(kb, got, ref.mse_forward(pred, target))
    close(kb, kb.ops.mse_backward(kb.asarray(pred), kb.asarray(target)), ref.mse_backward(pred, target))


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.0, False, 0.01), (0.9, False, 0.0),
                                                  (0.9, True, 5e-4)])
def test_sgd_update_in_place(kb, momentum, nesterov, wd):
    rng = np.random.default_rng(13)
    param, grad, vel = randn(rng, 4, 3, 3), randn(rng, 4, 3, 3), randn(rng, 4, 3, 3)
    want_p, want_v = param.copy(), vel.copy()
    ref.sgd_update(want_p, grad, want_v if momentum else None, 0.05, momentum, nesterov, wd)
    p, v = kb.asarray(param.copy()), kb.asarray(vel.copy())
    for _ in range(1):
        assert kb.ops.sgd_update(p, kb.asarray(grad), v if momentum else None, 0.05, momentum, nesterov, wd) is None
    close(kb, p, want_p, rtol=1e-6, atol=1e-6)
    close(kb, v, want_v if momentum else vel, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 1, 2), (4, 2, 3, 5), (2, 5, 7, 7)])
def test_batchnorm(kb, shape):
    rng = np.random.default_rng(14)
    x = randn(rng, *shape, scale=3.0) + 2.0
    c = shape[1]
    gamma, beta = randn(rng, c), randn(rng, c)
    want = ref.batchnorm2d_forward(x, gamma, beta, 1e-5)
    got = kb.ops.batchnorm2d_forward(kb.asarray(x), kb.asarray(gamma), kb.asarray(beta), 1e-5)
    for g, w in zip(got, want):
        close(kb, g, w, rtol=1e-4, atol=1e-5)
    rm, rv = randn(rng, c), np.abs(randn(rng, c)) + 0.1
    close(kb, kb.ops.batchnorm2d_inference(kb.asarray(x), kb.asarray(gamma), kb.asarray(beta), kb.asarray(rm),
                                           kb.asarray(rv), 1e-5),
          ref.batchnorm2d_inference(x, gamma, beta, rm, rv, 1e-5), rtol=1e-5)
    dy = randn(rng, *shape)
    _, mean, invstd, _ = want
    got = kb.ops.batchnorm2d_backward(kb.asarray(dy), kb.asarray(x), kb.asarray(gamma), kb.asarray(mean),
                                      kb.asarray(invstd))
    for g, w in zip(got, ref.batchnorm2d_backward(dy, x, gamma, mean, invstd)):
        close(kb, g, w, rtol=1e-4, atol=1e-4)


def test_float64_is_rejected_with_a_pointer_to_numpy(kb):
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(TypeError, match="relu_forward.*float32.*numpy backend"):
        kb.ops.relu_forward(kb.asarray(x))
    with pytest.raises(TypeError, match="conv2d_forward.*numpy backend"):
        kb.ops.conv2d_forward(kb.asarray(x), kb.asarray(np.zeros((1, 1, 3, 3))), None, (1, 1), (0, 0))


def test_non_contiguous_inputs_are_accepted(kb):
    rng = np.random.default_rng(15)
    x = randn(rng, 6, 8)
    view = kb.asarray(x)[:, ::2]
    close(kb, kb.ops.relu_forward(view), ref.relu_forward(x[:, ::2]))


# ---- a whole LeNet-5 training step, ops only -------------------------------------------

def _lenet_params(rng):
    shapes = {"c1w": (6, 1, 5, 5), "c1b": (6,), "c2w": (16, 6, 5, 5), "c2b": (16,), "f1w": (120, 400),
              "f1b": (120,), "f2w": (84, 120), "f2b": (84,), "f3w": (10, 84), "f3b": (10,)}
    return {k: randn(rng, *s, scale=0.2) for k, s in shapes.items()}


def _lenet_step(ops, xp_params, x, labels):
    """Forward + backward of LeNet-5 (28x28 input); returns loss and every gradient."""
    p = xp_params
    a1 = ops.conv2d_forward(x, p["c1w"], p["c1b"], (1, 1), (2, 2))
    r1 = ops.relu_forward(a1)
    m1, i1 = ops.maxpool2d_forward(r1, (2, 2), (2, 2), (0, 0))
    a2 = ops.conv2d_forward(m1, p["c2w"], p["c2b"], (1, 1), (0, 0))
    r2 = ops.tanh_forward(a2)
    m2 = ops.avgpool2d_forward(r2, (2, 2), (2, 2), (0, 0))
    flat = m2.reshape(m2.shape[0], -1)
    f1 = ops.relu_forward(ops.dense_forward(flat, p["f1w"], p["f1b"]))
    f2 = ops.gelu_forward(z2 := ops.dense_forward(f1, p["f2w"], p["f2b"]))
    logits = ops.dense_forward(f2, p["f3w"], p["f3b"])
    loss, probs = ops.softmax_cross_entropy_forward(logits, labels, 0.1)
    g = {}
    d = ops.softmax_cross_entropy_backward(probs, labels, 0.1)
    d, g["f3w"], g["f3b"] = ops.dense_backward(d, f2, p["f3w"])
    d = ops.gelu_backward(d, z2)
    d, g["f2w"], g["f2b"] = ops.dense_backward(d, f1, p["f2w"])
    d = ops.relu_backward(d, f1)
    d, g["f1w"], g["f1b"] = ops.dense_backward(d, flat, p["f1w"])
    d = ops.avgpool2d_backward(d.reshape(m2.shape), r2.shape, (2, 2), (2, 2), (0, 0))
    d = ops.tanh_backward(d, r2)
    g["c2w"] = ops.conv2d_backward_filter(d, m1, p["c2w"].shape, (1, 1), (0, 0))
    g["c2b"] = ops.conv2d_backward_bias(d)
    d = ops.conv2d_backward_data(d, p["c2w"], m1.shape, (1, 1), (0, 0))
    d = ops.maxpool2d_backward(d, i1, r1.shape)
    d = ops.relu_backward(d, r1)
    g["c1w"] = ops.conv2d_backward_filter(d, x, p["c1w"].shape, (1, 1), (2, 2))
    g["c1b"] = ops.conv2d_backward_bias(d)
    g["dx"] = ops.conv2d_backward_data(d, p["c1w"], x.shape, (1, 1), (2, 2))
    return loss, g


@pytest.mark.parametrize("variant", ["default", "igemm"])
def test_lenet5_training_step_matches_numpy(kb, variant):
    rng = np.random.default_rng(16)
    params = _lenet_params(rng)
    x = randn(rng, 4, 1, 28, 28)
    labels = rng.integers(0, 10, 4)
    if variant == "igemm":
        for op in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_filter"):
            kb.ops.set_variant(op, "igemm")
    want_loss, want = _lenet_step(ref, params, x, labels)
    got_loss, got = _lenet_step(kb.ops, {k: kb.asarray(v) for k, v in params.items()}, kb.asarray(x),
                                kb.asarray(labels))
    assert got_loss.shape == ()
    close(kb, got_loss, want_loss, rtol=1e-5)
    for name in want:
        close(kb, got[name], want[name], rtol=1e-4, atol=1e-5)
    # the SGD step that follows, on device, in place
    velocity = {k: kb.xp.zeros_like(v) for k, v in got.items() if k != "dx"}
    dev_params = {k: kb.asarray(v.copy()) for k, v in params.items()}  # numpy asarray would alias
    for k in velocity:
        kb.ops.sgd_update(dev_params[k], got[k], velocity[k], 0.1, 0.9, True, 1e-4)
        want_p = params[k].copy()
        ref.sgd_update(want_p, want[k], np.zeros_like(want_p), 0.1, 0.9, True, 1e-4)
        close(kb, dev_params[k], want_p, rtol=1e-4, atol=1e-5)


# ---- BatchNorm's op extensions and the deterministic max-pool backward -----------------

@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_batchnorm_fused_activation_and_running_stats(kb, activation):
    """Running statistics updated in place by the op, activation fused, chunks forced > 1."""
    rng = np.random.default_rng(17)
    x = randn(rng, 3, 4, 5, 5, scale=2.0) + 1.0
    gamma, beta, dy = randn(rng, 4), randn(rng, 4), randn(rng, 3, 4, 5, 5)
    kb.ops.bn_chunk = 16  # 75 values per channel: 5 chunks
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    want = ref.batchnorm2d_forward(x, gamma, beta, 1e-5, running_mean=rm, running_var=rv, momentum=0.1,
                                   activation=activation)
    dev_rm, dev_rv = kb.asarray(np.zeros(4, np.float32)), kb.asarray(np.ones(4, np.float32))
    got = kb.ops.batchnorm2d_forward(kb.asarray(x), kb.asarray(gamma), kb.asarray(beta), 1e-5,
                                     running_mean=dev_rm, running_var=dev_rv, momentum=0.1, activation=activation)
    for g, w in zip(got, want):
        close(kb, g, w, rtol=1e-4, atol=1e-5)
    close(kb, dev_rm, rm, rtol=1e-5, atol=1e-6)
    close(kb, dev_rv, rv, rtol=1e-5, atol=1e-6)
    _, mean, invstd, _ = want
    got = kb.ops.batchnorm2d_backward(kb.asarray(dy), kb.asarray(x), kb.asarray(gamma), kb.asarray(mean),
                                      kb.asarray(invstd), kb.asarray(beta), activation)
    for g, w in zip(got, ref.batchnorm2d_backward(dy, x, gamma, mean, invstd, beta, activation)):
        close(kb, g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}")
def test_maxpool_backward_deterministic(kb, case):
    """ops.deterministic: gather over covering windows (geometry given) or ordered scatter."""
    shape, kernel, stride, padding = case
    rng = np.random.default_rng(18)
    x = randn(rng, *shape)
    y, argmax = ref.maxpool2d_forward(x, kernel, stride, padding)
    dy = randn(rng, *y.shape)
    want = ref.maxpool2d_backward(dy, argmax, shape, kernel, stride, padding)
    kb.ops.deterministic = True
    for geometry in ((kernel, stride, padding), ()):
        got = kb.ops.maxpool2d_backward(kb.asarray(dy), kb.asarray(argmax), shape, *geometry)
        close(kb, got, want, rtol=1e-6, atol=1e-6)
