"""BatchNorm's two-stage reductions and the deterministic max-pool backward, kernel by kernel.

The kernel backends (emulated always, cuda on a GPU) against the NumPy float64 reference:
awkward shapes, chunk sizes forced small so the many-blocks-per-channel path runs at tiny
shapes, large-mean inputs, running statistics updated in place, fused activations, and the
max-pool gather bit-exact against a float32 sum in row-major window order. Shapes are tiny
because the emulator runs every CUDA thread as a fiber.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import backend as backend_module
from gpucnn import layers
from gpucnn.cuda import sources
from gpucnn.ops import numpy_ops as ref
from gpucnn.ops.kernel_ops import KernelOps




def _f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def _inputs(rng, shape, loc=2.0, scale=3.0):
    c = shape[1]
    x = (rng.standard_normal(shape) * scale + loc).astype(np.float32)
    gamma = (1.0 + 0.5 * rng.standard_normal(c)).astype(np.float32)
    beta = (0.5 * rng.standard_normal(c)).astype(np.float32)
    return x, gamma, beta


def _close(kb, got, want, rtol, atol):
    got = kb.to_host(got)
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# (N, C, H, W), chunk (None: the launcher's choice), threads per reduction block
BN_CASES = [
    ((3, 1, 5, 5), 7, 16),  # C=1, 75 values in 11 chunks, the last one short
    ((1, 3, 7, 7), 10, 16),  # N=1, 49 values per channel: not a multiple of the block
    ((3, 17, 1, 1), 2, 16),  # H=W=1: 3 values per channel, chunks of 2 and 1
    ((2, 3, 5, 5), None, 64),  # one chunk per channel, fewer values than threads
    ((3, 3, 7, 7), 50, 16),  # chunks longer than the block: each thread sums several values
    ((4, 3, 9, 9), 300, 256),  # 8 warps: shuffle trees, then warp 0 merges the warps' results
    ((2, 2, 5, 5), None, 1024),  # 32 warps, most of them without a value
]


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
@pytest.mark.parametrize("case", BN_CASES, ids=lambda c: f"{c[0]}-chunk{c[1]}-t{c[2]}")
def test_batchnorm_forward_backward_match_float64(kb, case, activation):
    shape, chunk, threads = case
    rng = np.random.default_rng(21)
    x, gamma, beta = _inputs(rng, shape)
    kb.ops.bn_chunk = chunk
    kb.ops.reduction_threads = threads
    if chunk is not None:
        assert kb.ops._bn_chunks(x.size // shape[1], shape[1])[1] > 1 or x.size // shape[1] <= chunk
    want = ref.batchnorm2d_forward(*_f64(x, gamma, beta), 1e-5, activation=activation)
    got = kb.ops.batchnorm2d_forward(kb.asarray(x), kb.asarray(gamma), kb.asarray(beta), 1e-5,
                                     activation=activation)
    for g, w in zip(got, want):
        _close(kb, g, w, rtol=2e-5, atol=2e-5)
    dy = rng.standard_normal(shape).astype(np.float32)
    _, mean, invstd, _ = want
    want_b = ref.batchnorm2d_backward(*_f64(dy, x, gamma, mean, invstd, beta), activation=activation)
    got_b = kb.ops.batchnorm2d_backward(kb.asarray(dy), kb.asarray(x), kb.asarray(gamma),
                                        kb.asarray(mean.astype(np.float32)), kb.asarray(invstd.astype(np.float32)),
                                        kb.asarray(beta), activation=activation)
    for g, w in zip(got_b, want_b):
        _close(kb, g, w, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(w).max())))


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_batchnorm_inference_with_fused_activation(kb, activation):
    rng = np.random.default_rng(22)
    x, gamma, beta = _inputs(rng, (2, 3, 5, 7))
    rm = rng.standard_normal(3).astype(np.float32)
    rv = (np.abs(rng.standard_normal(3)) + 0.1).astype(np.float32)
    want = ref.batchnorm2d_inference(*_f64(x, gamma, beta, rm, rv), 1e-5, activation=activation)
    got = kb.ops.batchnorm2d_inference(*(kb.asarray(a) for a in (x, gamma, beta, rm, rv)), 1e-5,
                                       activation=activation)
    _close(kb, got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [None, 9])
def test_batchnorm_statistics_of_large_mean_inputs(kb, chunk):
    """mean 100, std 0.01: E[x^2] - E[x]^2 in float32 would lose the variance entirely."""
    rng = np.random.default_rng(23)
    x = (100.0 + 0.01 * rng.standard_normal((4, 2, 6, 6))).astype(np.float32)
    gamma, beta = np.ones(2, np.float32), np.zeros(2, np.float32)
    kb.ops.bn_chunk = chunk
    kb.ops.reduction_threads = 16
    want_y, want_mean, _, want_var = ref.batchnorm2d_forward(*_f64(x, gamma, beta), 0.0)
    y, mean, invstd, var = kb.ops.batchnorm2d_forward(kb.asarray(x), kb.asarray(gamma), kb.asarray(beta), 0.0)
    _close(kb, var, want_var, rtol=1e-3, atol=0)
    _close(kb, mean, want_mean, rtol=1e-7, atol=0)
    # the float32 mean itself is off by up to half an ulp of 100 (3.8e-6 = 4e-4 std)
    _close(kb, y, want_y, rtol=0, atol=2e-3)


@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_batchnorm_running_statistics_update_in_place(kb, momentum):
    rng = np.random.default_rng(24)
    kb.ops.bn_chunk = 8
    kb.ops.reduction_threads = 16
    rm, rv = kb.asarray(np.full(3, 0.5, np.float32)), kb.asarray(np.full(3, 2.0, np.float32))
    rm_id, rv_id = id(rm), id(rv)
    want_rm, want_rv = np.full(3, 0.5), np.full(3, 2.0)
    for step in range(3):
        x, gamma, beta = _inputs(rng, (2, 3, 3, 5), loc=step)
        ref.batchnorm2d_forward(*_f64(x, gamma, beta), 1e-5, running_mean=want_rm, running_var=want_rv,
                                momentum=momentum)
        kb.ops.batchnorm2d_forward(kb.asarray(x), kb.asarray(gamma), kb.asarray(beta), 1e-5,
                                   running_mean=rm, running_var=rv, momentum=momentum)
        assert (id(rm), id(rv)) == (rm_id, rv_id)
        _close(kb, rm, want_rm, rtol=1e-5, atol=1e-6)
        _close(kb, rv, want_rv, rtol=1e-5, atol=1e-6)
    assert not np.allclose(want_rm, 0.5)  # the statistics moved


def test_batchnorm_is_bit_identical_across_runs_and_close_across_chunkings(kb):
    rng = np.random.default_rng(25)
    x, gamma, beta = _inputs(rng, (3, 2, 5, 5))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    kb.ops.reduction_threads = 16

    def run(chunk):
        kb.ops.bn_chunk = chunk
        y, mean, invstd, var = kb.ops.batchnorm2d_forward(kb.asarray(x), kb.asarray(gamma), kb.asarray(beta), 1e-5)
        grads = kb.ops.batchnorm2d_backward(kb.asarray(dy), kb.asarray(x), kb.asarray(gamma), mean, invstd)
        return [kb.to_host(a) for a in (y, mean, invstd, var, *grads)]

    first, second = run(6), run(6)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, run(None)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


class _FakeLauncher:
    multiprocessor_count = 132  # an H100 / H200
    reduction_threads = 256


@pytest.mark.parametrize("shape", [(512, 64, 32, 32), (512, 128, 16, 16), (512, 256, 8, 8), (512, 512, 4, 4),
                                   (128, 64, 32, 32), (128, 512, 2, 2)])
def test_batchnorm_chunks_fill_an_h100_at_cifar10_shapes(shape):
    n, c, h, w = shape
    ops = KernelOps(_FakeLauncher(), np)
    chunk, chunks = ops._bn_chunks(n * h * w, c)
    assert (chunks - 1) * chunk < n * h * w <= chunks * chunk  # the chunks cover every value once
    assert c * chunks >= 2 * _FakeLauncher.multiprocessor_count  # at least two blocks per SM
    assert chunk >= min(n * h * w, ops.bn_min_chunk)  # and none too short to amortize its tree


def test_batchnorm_bad_arguments_are_named(kb):
    x, g, b = (kb.asarray(a) for a in (np.ones((2, 2, 2, 2), np.float32), np.ones(2, np.float32),
                                       np.zeros(2, np.float32)))
    with pytest.raises(ValueError, match="activation 'tanh' cannot be fused"):
        kb.ops.batchnorm2d_forward(x, g, b, 1e-5, activation="tanh")
    with pytest.raises(ValueError, match="running_mean and running_var go together"):
        kb.ops.batchnorm2d_forward(x, g, b, 1e-5, running_mean=kb.asarray(np.zeros(2, np.float32)))
    with pytest.raises(TypeError, match="running_var must be a C-contiguous float32 array of shape \\(2,\\)"):
        kb.ops.batchnorm2d_forward(x, g, b, 1e-5, running_mean=kb.asarray(np.zeros(2, np.float32)),
                                   running_var=kb.asarray(np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match="activation 'relu' needs beta"):
        kb.ops.batchnorm2d_backward(x, x, g, g, g, activation="relu")


def test_batchnorm_layer_keeps_its_running_arrays(kb):
    """The layer hands its running arrays to the op (updated in place), same values as numpy."""
    rng = np.random.default_rng(26)
    x = (rng.standard_normal((2, 3, 4, 4)) * 2 + 1).astype(np.float32)
    layer = layers.BatchNorm2D(3, momentum=0.2)
    with backend_module.use_backend("numpy"):
        twin = layers.BatchNorm2D(3, momentum=0.2)
    held = layer.running_mean, layer.running_var
    for _ in range(2):
        layer.forward(kb.asarray(x), training=True)
        with backend_module.use_backend("numpy"):
            twin.forward(x, training=True)
    assert layer.running_mean is held[0] and layer.running_var is held[1]
    _close(kb, layer.running_mean, twin.running_mean, rtol=1e-5, atol=1e-6)
    _close(kb, layer.running_var, twin.running_var, rtol=1e-5, atol=1e-6)


# ---- a deliberately broken combine kernel is caught ------------------------------------

BROKEN_COMBINES = {
    # every chunk counted as full: the short last chunk gets too much weight
    "last-chunk-count": ("const float n = (float)((begin + chunk < M ? begin + chunk : M) - begin);",
                         "const float n = (float)chunk;"),
    # chunks merged without the between-chunk term d^2 na nb / n
    "no-between-term": ("chan_merge(count, mean, m2, n, pg[0], pg[1]);",
                        "{ const float t = count + n; mean = (count * mean + n * pg[0]) / t; m2 += pg[1]; count = t; }"),
}


@pytest.mark.parametrize("bug", sorted(BROKEN_COMBINES))
def test_broken_combine_kernel_fails_parity(bug):
    from gpucnn.cuda.emulator import EmulatedLauncher

    text = sources.read_sources()["batchnorm.cu"]
    old, new = BROKEN_COMBINES[bug]
    assert text.count(old) == 1
    rng = np.random.default_rng(27)
    x, gamma, beta = _inputs(rng, (3, 2, 5, 5))
    x[:, :, :2] += 4.0  # chunks with different means
    want = ref.batchnorm2d_forward(*_f64(x, gamma, beta), 1e-5)
    for launcher, ok in ((EmulatedLauncher(), True), (EmulatedLauncher(source_overrides={"batchnorm.cu": text.replace(old, new)}), False)):
        ops = KernelOps(launcher, np)
        # 75 values: 18 chunks of 4 and one of 3, more chunks than the 16 threads, so some
        # threads merge two chunks serially before the tree
        ops.bn_chunk, ops.reduction_threads = 4, 16
        got = ops.batchnorm2d_forward(x, gamma, beta, 1e-5)
        agree = all(np.allclose(g, w, rtol=2e-5, atol=2e-5) for g, w in zip(got, want))
        assert agree == ok, f"{bug}: shipped={ok}"


# ---- max-pool backward: deterministic gather ----------------------------------------------

def _ordered_float32_maxpool_backward(dy, argmax, x_shape):
    """dx in float32, each element ((0 + d1) + d2) + ... over its windows in row-major order."""
    n, c, h, w = x_shape
    planes = n * c
    dx = np.zeros((planes, h * w), np.float32)
    dyf, af = dy.reshape(planes, -1), argmax.reshape(planes, -1)
    rows = np.arange(planes)
    for k in range(dyf.shape[1]):  # one window per plane at a time: no index repeats
        dx[rows, af[:, k]] += dyf[:, k]
    return dx.reshape(x_shape)


POOL_CASES = [
    ((2, 3, 7, 7), (3, 3), (1, 1), (1, 1)),
    ((2, 2, 9, 8), (3, 3), (2, 2), (1, 1)),
    ((1, 2, 6, 7), (2, 3), (1, 2), (0, 1)),
]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}")
def test_maxpool_backward_gather_is_bit_exact(kb, case, ties):
    shape, kernel, stride, padding = case
    rng = np.random.default_rng(28)
    x = rng.standard_normal(shape).astype(np.float32)
    if ties:  # few distinct values: many windows choose the same input
        x = np.round(x).astype(np.float32)
    _, argmax = ref.maxpool2d_forward(x, kernel, stride, padding)
    dy = rng.standard_normal(argmax.shape).astype(np.float32)
    dy_dyadic = np.round(dy * 8) / np.float32(8)  # every partial sum exact: any order agrees
    kb.ops.deterministic = True
    dev_argmax = kb.asarray(argmax)
    runs = [kb.to_host(kb.ops.maxpool2d_backward(kb.asarray(dy), dev_argmax, shape, kernel, stride, padding))
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], _ordered_float32_maxpool_backward(dy, argmax, shape))
    # without the geometry: the per-plane ordered scatter, the same sums
    ordered = kb.to_host(kb.ops.maxpool2d_backward(kb.asarray(dy), dev_argmax, shape))
    np.testing.assert_array_equal(ordered, runs[0])
    got = kb.to_host(kb.ops.maxpool2d_backward(kb.asarray(dy_dyadic), dev_argmax, shape, kernel, stride, padding))
    np.testing.assert_array_equal(got, ref.maxpool2d_backward(dy_dyadic, argmax, shape, kernel, stride, padding))
    if ties:  # the case really routes several deltas into one input
        assert any(len(set(p)) < len(p) for p in argmax.reshape(shape[0] * shape[1], -1).tolist())


def test_maxpool_backward_non_overlapping_is_exact_without_the_gather(kb):
    rng = np.random.default_rng(29)
    x = rng.standard_normal((2, 3, 8, 6)).astype(np.float32)
    _, argmax = ref.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    dy = rng.standard_normal(argmax.shape).astype(np.float32)
    for deterministic in (False, True):
        kb.ops.deterministic = deterministic
        got = kb.ops.maxpool2d_backward(kb.asarray(dy), kb.asarray(argmax), x.shape, (2, 2), (2, 2), (0, 0))
        np.testing.assert_array_equal(kb.to_host(got), ref.maxpool2d_backward(dy, argmax, x.shape))


def test_maxpool_backward_geometry_is_checked(kb):
    dy, argmax = np.zeros((1, 1, 3, 3), np.float32), np.zeros((1, 1, 3, 3), np.int32)
    with pytest.raises(ValueError, match="kernel, stride and padding go together"):
        kb.ops.maxpool2d_backward(kb.asarray(dy), kb.asarray(argmax), (1, 1, 6, 6), (2, 2))
    with pytest.raises(ValueError, match=r"dy has shape \(1, 1, 3, 3\), expected \(1, 1, 2, 2\)"):
        kb.ops.maxpool2d_backward(kb.asarray(dy), kb.asarray(argmax), (1, 1, 4, 4), (2, 2), (2, 2), (0, 0))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_fused_reference_backward_matches_finite_differences(activation):
    """The NumPy reference of the fused op (what the kernels are held to), float64."""
    rng = np.random.default_rng(30)
    x = rng.standard_normal((2, 2, 3, 3)) * 2.0 + 0.5
    gamma, beta = rng.standard_normal(2), rng.standard_normal(2)
    weight = rng.standard_normal(x.shape)

    def loss(x_, g_, b_):
        return float((ref.batchnorm2d_forward(x_, g_, b_, 1e-5, activation=activation)[0] * weight).sum())

    _, mean, invstd, _ = ref.batchnorm2d_forward(x, gamma, beta, 1e-5, activation=activation)
    dx, dgamma, dbeta = ref.batchnorm2d_backward(weight, x, gamma, mean, invstd, beta, activation)
    h = 1e-6
    for value, grad, at in ((x, dx, 0), (gamma, dgamma, 1), (beta, dbeta, 2)):
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            args = [x.copy(), gamma.copy(), beta.copy()]
            args[at][i] += h
            up = loss(*args)
            args[at][i] -= 2 * h
            numeric[i] = (up - loss(*args)) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)
