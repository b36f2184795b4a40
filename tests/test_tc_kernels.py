"""Tensor-core kernels (kernels/conv2d_tc.cu through gpucnn.cuda.tc_ops) against NumPy.

The reference of a precision rounds the float32 operands with gpucnn.precision and sums
the products in float64. Integer-valued inputs make every product and partial sum exact
in fp32, so the kernels must match that reference bit for bit; the large operand is
chosen so that it needs rounding (including exact ties, which tell ties-away TF32 from
ties-to-even bf16). Random inputs are compared with a tolerance derived from K: the fp32
accumulation bound 2 K u sum|a b| (u = 2**-24). Shapes are small on purpose: the emulator
runs every thread as a fiber.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import backend as backend_module
from gpucnn.cuda import nvrtc_check, sass_report, sources, tc_ops
from gpucnn.cuda.emulator import EmulatedLauncher
from gpucnn.ops import numpy_ops as ref
from gpucnn.precision import round_to_bf16, round_to_tf32

PRECISIONS = ("tf32", "bf16")
ROUND = {"tf32": round_to_tf32, "bf16": round_to_bf16}
KERNEL_FILE = "conv2d_tc.cu"
TC_KERNELS = [f"{op}_{p}" for op in ("conv2d_forward_tc", "conv2d_backward_data_tc", "conv2d_backward_filter_tc",
                                     "gemm_tc") for p in PRECISIONS]
# Integers that need rounding in each precision, with ties: TF32 keeps 11 significant bits
# (2049 is a tie: away -> 2050, even would give 2048), bf16 keeps 8 (257 -> 256 by ties-to-even).
BIG = {"tf32": 4100, "bf16": 600}
TIES = {"tf32": (2049.0, -2049.0, 2051.0, 4095.0), "bf16": (257.0, -257.0, 259.0, 383.0)}
U = 2.0**-24


@pytest.fixture(scope="module")
def launcher():
    return EmulatedLauncher()


# ---- references -----------------------------------------------------------------------------
def _r64(a, precision):
    return ROUND[precision](np.ascontiguousarray(a, dtype=np.float32)).astype(np.float64)


def big_ints(rng, shape, precision):
    """Integer-valued float32 array whose values mostly need rounding; the first few are ties."""
    a = rng.integers(-BIG[precision], BIG[precision] + 1, size=shape).astype(np.float32)
    flat = a.reshape(-1)
    flat[: len(TIES[precision])] = TIES[precision][: flat.size]
    return a


def small_ints(rng, shape):
    return rng.integers(-3, 4, size=shape).astype(np.float32)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def assert_within_k_bound(got, want, bound, k):
    """|got - want| <= 2 K u bound (bound: the same op on |operands|, float64) elementwise."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == np.float32
    tol = 2.0 * k * U * bound + 1e-30
    err = np.abs(got.astype(np.float64) - want)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), f"K={k}: error {err[worst]:.3g} > tolerance {tol[worst]:.3g} at {worst}"


# ---- integer inputs: bit-exact ---------------------------------------------------------------
EXACT_CONV = [
    # (N, C, H, W), (O, KH, KW), stride, padding
    ((1, 3, 7, 9), (5, 3, 3), 1, 1),
    ((3, 5, 5, 6), (13, 1, 1), 2, 0),
    ((1, 17, 6, 7), (3, 5, 5), 1, 2),
    ((2, 13, 5, 5), (70, 3, 3), 2, 1),  # two column tiles of output channels
    ((2, 4, 8, 8), (6, 3, 3), 1, 1),  # C*KH*KW and OH*OW multiples of 4: 16-byte cp.async of w and dy
]


def _ids(case):
    (n, c, h, w), (o, kh, kw), s, p = case
    return f"n{n}c{c}-{h}x{w}-o{o}k{kh}x{kw}-s{s}p{p}"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", EXACT_CONV, ids=_ids)
def test_conv_integer_inputs_bit_exact(launcher, precision, case):
    (n, c, h, w), (o, kh, kw), s, p = case
    rng = np.random.default_rng(10)
    x, wt, b = big_ints(rng, (n, c, h, w), precision), small_ints(rng, (o, c, kh, kw)), small_ints(rng, (o,))
    stride, pad = (s, s), (p, p)
    x64, w64 = _r64(x, precision), wt.astype(np.float64)

    want = ref.conv2d_forward(x64, w64, b.astype(np.float64), stride, pad)
    y = tc_ops.conv2d_forward_tc(launcher, np, x, wt, b, s, p, precision)
    np.testing.assert_array_equal(y, want)
    # the rounding is really applied: the unrounded product differs somewhere
    assert not np.array_equal(want, ref.conv2d_forward(x.astype(np.float64), w64, b.astype(np.float64), stride, pad))
    relu = tc_ops.conv2d_forward_tc(launcher, np, x, wt, None, s, p, precision, relu=True)
    np.testing.assert_array_equal(relu, np.maximum(ref.conv2d_forward(x64, w64, None, stride, pad), 0))

    dy = big_ints(rng, want.shape, precision)
    dx = tc_ops.conv2d_backward_data_tc(launcher, np, dy, wt, x.shape, stride, pad, precision)
    np.testing.assert_array_equal(dx, ref.conv2d_backward_data(_r64(dy, precision), w64, x.shape, stride, pad))

    dys = small_ints(rng, want.shape)
    want_dw = ref.conv2d_backward_filter(dys.astype(np.float64), x64, wt.shape, stride, pad)
    for splits in (1, 3):
        dw = tc_ops.conv2d_backward_filter_tc(launcher, np, dys, x, wt.shape, s, p, precision, splits=splits)
        np.testing.assert_array_equal(dw, want_dw, err_msg=f"splits={splits}")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("k", [37, 36])  # 36: rows along K move as 16-byte copies
def test_gemm_integer_inputs_bit_exact(launcher, precision, trans_a, trans_b, k):
    rng = np.random.default_rng(20)
    m, nn = 67, 9  # two row tiles, a ragged K chunk, a narrow column tile
    a, b, bias = big_ints(rng, (m, k), precision), small_ints(rng, (k, nn)), small_ints(rng, (nn,))
    a_arg = np.ascontiguousarray(a.T) if trans_a else a
    b_arg = np.ascontiguousarray(b.T) if trans_b else b
    product = _r64(a, precision) @ b.astype(np.float64)
    for splits in (1, 2):
        got = tc_ops.gemm_tc(launcher, np, a_arg, b_arg, precision, trans_a=trans_a, trans_b=trans_b, splits=splits)
        np.testing.assert_array_equal(got, product, err_msg=f"splits={splits}")
    fused = tc_ops.gemm_tc(launcher, np, a_arg, b_arg, precision, trans_a=trans_a, trans_b=trans_b,
                           bias=bias, relu=True)
    np.testing.assert_array_equal(fused, np.maximum(product + bias, 0))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_misaligned_operands_take_the_4_byte_path(launcher, precision):
    """Rows of 8 floats starting 4 bytes past a 16-byte boundary: no 16-byte copies, same answer."""
    rng = np.random.default_rng(21)
    a, b = big_ints(rng, (5, 8), precision), small_ints(rng, (3, 8))
    buffer = np.empty(a.size + 1, np.float32)
    shifted = buffer[1:].reshape(a.shape)
    shifted[...] = a
    assert shifted.ctypes.data % 16 != 0 and shifted.flags.c_contiguous
    want = _r64(a, precision) @ b.T.astype(np.float64)
    np.testing.assert_array_equal(tc_ops.gemm_tc(launcher, np, shifted, b, precision, trans_b=True), want)
    np.testing.assert_array_equal(tc_ops.gemm_tc(launcher, np, a, b, precision, trans_b=True), want)


def test_rounding_mode_is_the_precision_module_s(launcher):
    """A 1x1 GEMM per tie value: TF32 rounds ties away from zero, bf16 to even."""
    for precision, values, expected in (("tf32", (2049.0, -2049.0, 2051.0), (2050.0, -2050.0, 2052.0)),
                                        ("bf16", (257.0, -257.0, 259.0), (256.0, -256.0, 260.0))):
        a = np.array(values, np.float32).reshape(3, 1)
        got = tc_ops.gemm_tc(launcher, np, a, np.ones((1, 1), np.float32), precision)
        np.testing.assert_array_equal(got.reshape(-1), expected)
        np.testing.assert_array_equal(ROUND[precision](np.array(values, np.float32)), expected)


# ---- random inputs: the same-precision reference within the K-derived bound ------------------
RANDOM_CONV = [
    ((1, 3, 7, 9), (5, 5, 5), 1, 2),
    ((3, 5, 7, 9), (4, 3, 3), 2, 1),
    ((1, 13, 1, 1), (6, 1, 1), 1, 0),
    ((3, 17, 1, 1), (5, 3, 3), 1, 1),  # 1x1 input, 3x3 filter: only the centre tap is inside
    ((1, 5, 7, 9), (3, 3, 3), 2, 0),
    ((3, 3, 5, 4), (7, 5, 5), 2, 2),
]


def check_conv_random(launcher, xp, to_host, precision, case, splits=None, seed=30):
    """Forward, backward-data and backward-filter of one random case within the K bound."""
    (n, c, h, w), (o, kh, kw), s, p = case
    rng = np.random.default_rng(seed)
    x, wt, b = randn(rng, n, c, h, w), randn(rng, o, c, kh, kw), randn(rng, o)
    stride, pad = (s, s), (p, p)
    xr, wr = _r64(x, precision), _r64(wt, precision)

    want = ref.conv2d_forward(xr, wr, b.astype(np.float64), stride, pad)
    bound = ref.conv2d_forward(np.abs(xr), np.abs(wr), np.abs(b.astype(np.float64)), stride, pad)
    y = tc_ops.conv2d_forward_tc(launcher, xp, xp.asarray(x), xp.asarray(wt), xp.asarray(b), s, p, precision)
    assert_within_k_bound(to_host(y), want, bound, c * kh * kw + 1)

    dy = randn(rng, *want.shape)
    dyr = _r64(dy, precision)
    dx = tc_ops.conv2d_backward_data_tc(launcher, xp, xp.asarray(dy), xp.asarray(wt), x.shape, stride, pad, precision)
    assert_within_k_bound(to_host(dx), ref.conv2d_backward_data(dyr, wr, x.shape, stride, pad),
                          ref.conv2d_backward_data(np.abs(dyr), np.abs(wr), x.shape, stride, pad), o * kh * kw)

    k = n * want.shape[2] * want.shape[3]
    dw = tc_ops.conv2d_backward_filter_tc(launcher, xp, xp.asarray(dy), xp.asarray(x), wt.shape, s, p, precision,
                                          splits=splits)
    assert_within_k_bound(to_host(dw), ref.conv2d_backward_filter(dyr, xr, wt.shape, stride, pad),
                          ref.conv2d_backward_filter(np.abs(dyr), np.abs(xr), wt.shape, stride, pad), k)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", RANDOM_CONV, ids=_ids)
def test_conv_random_inputs_match_same_precision_reference(launcher, precision, case):
    check_conv_random(launcher, np, np.asarray, precision, case, splits=2)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_dense_layer_gemms_random(launcher, precision):
    """The three GEMMs of a Dense layer (forward with bias, dx, dw) against numpy_ops."""
    rng = np.random.default_rng(40)
    n, i, o = 3, 21, 10
    x, w, b, dy = randn(rng, n, i), randn(rng, o, i), randn(rng, o), randn(rng, n, o)
    xr, wr, dyr = _r64(x, precision), _r64(w, precision), _r64(dy, precision)
    y = tc_ops.dense_forward_tc(launcher, np, x, w, b, precision)
    assert_within_k_bound(y, ref.dense_forward(xr, wr, b.astype(np.float64)),
                          ref.dense_forward(np.abs(xr), np.abs(wr), np.abs(b.astype(np.float64))), i + 1)
    want_dx, want_dw, _ = ref.dense_backward(dyr, xr, wr)
    bound_dx, bound_dw, _ = ref.dense_backward(np.abs(dyr), np.abs(xr), np.abs(wr))
    dx, dw = tc_ops.dense_backward_tc(launcher, np, dy, x, w, precision)
    assert_within_k_bound(dx, want_dx, bound_dx, o)
    assert_within_k_bound(dw, want_dw, bound_dw, n)


# ---- the tests can fail ----------------------------------------------------------------------
def test_dropping_the_tf32_rounding_is_caught():
    """Feed the mma unrounded fp32 words: the tie in the bit-exact GEMM test must now differ."""
    text = sources.read_sources()[KERNEL_FILE]
    needle = "a[mi][i] = tc_f32_to_tf32(__uint_as_float(a[mi][i]));"
    assert needle in text
    broken = EmulatedLauncher(source_overrides={KERNEL_FILE: text.replace(needle, ";")})
    a = np.array([[2049.0], [1.0]], np.float32)
    got = tc_ops.gemm_tc(broken, np, a, np.ones((1, 1), np.float32), "tf32")
    assert got[0, 0] != 2050.0


def test_a_shifted_delta_gather_is_caught(launcher):
    """Read dy one column off in backward-data: the comparison must fail."""
    text = sources.read_sources()[KERNEL_FILE]
    needle = "return r.base + k.off + oh * OW + ow;"
    assert text.count(needle) == 1
    broken = EmulatedLauncher(source_overrides={KERNEL_FILE: text.replace(needle, "return r.base + k.off + oh * OW;")})
    rng = np.random.default_rng(50)
    dy, wt = small_ints(rng, (1, 2, 5, 5)), small_ints(rng, (2, 3, 3, 3))
    want = ref.conv2d_backward_data(dy.astype(np.float64), wt.astype(np.float64), (1, 3, 5, 5), (1, 1), (1, 1))
    np.testing.assert_array_equal(tc_ops.conv2d_backward_data_tc(launcher, np, dy, wt, (1, 3, 5, 5), 1, 1, "bf16"),
                                  want)
    assert not np.array_equal(tc_ops.conv2d_backward_data_tc(broken, np, dy, wt, (1, 3, 5, 5), 1, 1, "bf16"), want)


# ---- bad input -------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error(launcher):
    x, w = np.zeros((1, 3, 5, 5), np.float32), np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="precision must be one of tf32, bf16, got 'fp16'"):
        tc_ops.conv2d_forward_tc(launcher, np, x, w, None, 1, 0, "fp16")
    with pytest.raises(TypeError, match="x must be float32"):
        tc_ops.conv2d_forward_tc(launcher, np, x.astype(np.float64), w, None, 1, 0, "tf32")
    with pytest.raises(ValueError, match="input has 2 channels but the filter expects 3"):
        tc_ops.conv2d_forward_tc(launcher, np, x[:, :2], w, None, 1, 0, "tf32")
    with pytest.raises(ValueError, match="bias has 3 entries, expected 4"):
        tc_ops.conv2d_forward_tc(launcher, np, x, w, np.zeros(3, np.float32), 1, 0, "tf32")
    with pytest.raises(ValueError, match=r"dy has shape \(1, 4, 2, 2\), expected \(1, 4, 3, 3\)"):
        tc_ops.conv2d_backward_data_tc(launcher, np, np.zeros((1, 4, 2, 2), np.float32), w, x.shape, 1, 0, "bf16")
    with pytest.raises(ValueError, match="inner sizes must agree"):
        tc_ops.gemm_tc(launcher, np, np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32), "tf32")
    with pytest.raises(ValueError, match="smaller than the kernel"):
        tc_ops.conv2d_forward_tc(launcher, np, x[:, :, :2, :2], w, None, 1, 0, "bf16")


def test_split_choice_fills_the_device_but_keeps_splits_long():
    class Device:
        multiprocessor_count = 132

    # one 64x64 output tile, K = 100 chunks: 528 blocks wanted, but at least 8 chunks each
    assert tc_ops.choose_splits(Device(), 64, 64, 100 * tc_ops.BLOCK_K) == 12
    assert tc_ops.choose_splits(Device(), 64 * 64, 64 * 64, 10**6) == 1  # 4096 tiles fill it already
    assert tc_ops.choose_splits(Device(), 8, 8, 16, splits=5) == 1  # never more splits than chunks
    with pytest.raises(ValueError, match="splits must be >= 1"):
        tc_ops.choose_splits(Device(), 8, 8, 16, splits=0)


# ---- machine code ----------------------------------------------------------------------------
def test_kernels_are_found_and_run_as_fibers(launcher):
    """Every tc kernel is parsed, and runs with barriers (its mma/ldmatrix need the whole warp)."""
    for name in TC_KERNELS:
        assert launcher.index[name].file == KERNEL_FILE
        assert launcher.index[name].uses_barriers


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvrtc_machine_code_has_tensor_core_instructions_and_no_spills(arch):
    """NVRTC compiles every tc kernel to sm_80/sm_90 machine code: no spills within the launch
    bounds (128 threads, 4 blocks an SM: <= 128 registers), mma/ldmatrix/cp.async in the SASS."""
    if nvrtc_check.load_nvrtc() is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc, or set GPUCNN_NVRTC)")
    disassembler = sass_report.find_disassembler()
    rows = {r["kernel"]: r for r in sass_report.file_report(KERNEL_FILE, sources.read_sources()[KERNEL_FILE], arch,
                                                            disassembler)}
    assert sorted(rows) == sorted(TC_KERNELS)
    for name, r in rows.items():
        assert (r["spill_stores"], r["spill_loads"], r["stack"]) == (0, 0, 0), r
        assert r["threads"] == tc_ops.THREADS and not r["threads_assumed"], r
        assert r["registers"] <= 128 and r["blocks_per_sm"] >= 4, r
        assert r["smem"] <= 48 * 1024, r
        if disassembler is not None:
            assert r["hmma"] > 0 and r["ldgsts"] > 0, r
            assert (r["ldsm"] > 0) == name.endswith("tf32"), r  # bf16 fragments are LDS.64 pairs


# ---- on a real GPU ---------------------------------------------------------------------------
@pytest.fixture
def gpu():
    """(CudaLauncher, cupy, backend) on the cuda backend."""
    with backend_module.use_backend("cuda") as b:
        from gpucnn.cuda.launcher import CudaLauncher

        yield CudaLauncher(), b.xp, b


GPU_CONV = [
    ((8, 17, 33, 31), (70, 3, 3), 1, 1),
    ((4, 64, 16, 16), (128, 5, 5), 2, 2),
    ((32, 3, 32, 32), (64, 3, 3), 1, 1),  # first layer of a CIFAR net: K = 27, backward-filter split
    ((2, 256, 8, 8), (256, 1, 1), 1, 0),
]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", GPU_CONV, ids=_ids)
def test_gpu_conv_matches_same_precision_reference(gpu, precision, case):
    launcher, xp, backend = gpu
    check_conv_random(launcher, xp, backend.to_host, precision, case)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_gpu_integer_inputs_bit_exact(gpu, precision):
    """Exact sums on the GPU too, whatever order the tensor cores add in."""
    launcher, xp, backend = gpu
    rng = np.random.default_rng(70)
    a, b = big_ints(rng, (300, 128), precision), small_ints(rng, (128, 130))
    got = tc_ops.gemm_tc(launcher, xp, xp.asarray(a), xp.asarray(b), precision)
    np.testing.assert_array_equal(backend.to_host(got), _r64(a, precision) @ b.astype(np.float64))
    x, wt = big_ints(rng, (4, 16, 12, 12), precision), small_ints(rng, (32, 16, 3, 3))
    y = tc_ops.conv2d_forward_tc(launcher, xp, xp.asarray(x), xp.asarray(wt), None, 1, 1, precision)
    np.testing.assert_array_equal(backend.to_host(y),
                                  ref.conv2d_forward(_r64(x, precision), wt.astype(np.float64), None, (1, 1), (1, 1)))
