"""Tensor-core primitives: the NumPy reference rounding (gpucnn.precision) against hand-computed
bit patterns, an independent nearest-neighbour model and torch; kernels/tc.cuh on the emulator."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from gpucnn import precision
from gpucnn.cuda import nvrtc_check, sources
from gpucnn.cuda.emulator import EmulatedLauncher


def _f(*bits) -> np.ndarray:
    return np.array(bits, np.uint32).view(np.float32)


def _bits(x) -> list[int]:
    return [int(b) for b in np.asarray(x, np.float32).view(np.uint32)]


# (input bits, TF32 bits): ties go away from zero (RNE would give 0x3F800000 for the first).
TF32_CASES = [
    (0x3F801000, 0x3F802000),  # 1 + 2^-11: tie, away from zero
    (0x3F803000, 0x3F804000),  # 1 + 3*2^-11: tie
    (0xBF801000, 0xBF802000),  # negative tie: magnitude grows
    (0x3F800FFF, 0x3F800000),  # just below the tie
    (0x3F801001, 0x3F802000),  # just above
    (0x3F800000, 0x3F800000),  # exact
    (0x3FFFF000, 0x40000000),  # carry into the exponent
    (0x7F7FEFFF, 0x7F7FE000),  # largest TF32 stays
    (0x7F7FF000, 0x7F800000),  # tie above the largest TF32: +inf
    (0xFF7FF000, 0xFF800000),  # ... and -inf
    (0x00001000, 0x00002000),  # subnormal tie
    (0x00000FFF, 0x00000000),  # tiny subnormal to +0
    (0x807FF000, 0x80800000),  # negative subnormal rounds to the smallest normal
    (0x7F800000, 0x7F800000),  # +inf
    (0xFF800000, 0xFF800000),  # -inf
    (0x80000000, 0x80000000),  # -0
]

# (input bits, bf16 bits): ties to even.
BF16_CASES = [
    (0x3F808000, 0x3F80),  # tie, kept lsb even
    (0x3F818000, 0x3F82),  # tie, lsb odd: up
    (0xBF808000, 0xBF80),  # negative ties
    (0xBF818000, 0xBF82),
    (0x3F808001, 0x3F81),  # just above the tie
    (0x3F807FFF, 0x3F80),  # just below
    (0x3FFF8000, 0x4000),  # carry into the exponent
    (0x7F7F7FFF, 0x7F7F),  # largest bf16 stays
    (0x7F7F8000, 0x7F80),  # tie above the largest bf16 (odd lsb): +inf
    (0xFF7F8000, 0xFF80),  # -inf
    (0x00008000, 0x0000),  # subnormal tie to even (zero)
    (0x00018000, 0x0002),  # subnormal tie up
    (0x00008001, 0x0001),
    (0x807FFFFF, 0x8080),  # negative subnormal to the smallest normal
    (0x7F800000, 0x7F80),
    (0x80000000, 0x8000),
]


@pytest.mark.parametrize("given, want", TF32_CASES)
def test_tf32_bit_patterns(given, want):
    assert _bits(precision.round_to_tf32(_f(given))) == [want]


@pytest.mark.parametrize("given, want", BF16_CASES)
def test_bf16_bit_patterns(given, want):
    assert int(precision.to_bf16_bits(_f(given))[0]) == want
    assert _bits(precision.round_to_bf16(_f(given))) == [want << 16]


@pytest.mark.parametrize("nan_bits", [0x7F800001, 0x7FC00000, 0xFF800001, 0x7FFFFFFF, 0x7F801FFF])
def test_nan_stays_nan_with_its_sign(nan_bits):
    """A NaN whose payload lies only in the dropped bits must not become infinity."""
    for rounded in (precision.round_to_tf32(_f(nan_bits)), precision.round_to_bf16(_f(nan_bits))):
        assert np.isnan(rounded[0])
        assert np.signbit(rounded[0]) == bool(nan_bits >> 31)


def _nearest(bits: np.ndarray, drop: int, ties_away: bool) -> np.ndarray:
    """Independent model: pick the nearer of the two candidates by float64 distance."""
    lo = bits & np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
    hi = lo + np.uint32(1 << drop)
    x, lo_v = bits.view(np.float32).astype(np.float64), lo.view(np.float32).astype(np.float64)
    hi_v = np.where((hi & 0x7FFFFFFF) == 0x7F800000, np.copysign(2.0**128, x), hi.view(np.float32).astype(np.float64))
    d_lo, d_hi = np.abs(x - lo_v), np.abs(hi_v - x)
    tie_up = np.ones_like(bits, bool) if ties_away else ((lo >> np.uint32(drop)) & 1) == 1
    return np.where((d_hi < d_lo) | ((d_hi == d_lo) & tie_up), hi, lo)


def _random_finite_bits(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    bits[: n // 8] &= np.uint32(0x807FFFFF)  # subnormals
    bits[n // 8 : n // 4] |= np.uint32(0x7F000000)  # near the top of the range
    bits[n // 4 : n // 2] = (bits[n // 4 : n // 2] & ~np.uint32(0xFFFF)) | np.uint32(0x8000)  # bf16 ties
    bits[n // 2 : 3 * n // 4] = (bits[n // 2 : 3 * n // 4] & ~np.uint32(0x1FFF)) | np.uint32(0x1000)  # tf32 ties
    finite = (bits & 0x7F800000) != 0x7F800000
    return bits[finite]


def test_tf32_matches_the_nearest_neighbour_model():
    bits = _random_finite_bits(20000)
    got = precision.round_to_tf32(bits.view(np.float32)).view(np.uint32)
    np.testing.assert_array_equal(got, _nearest(bits, 13, ties_away=True))


def test_bf16_matches_the_nearest_neighbour_model():
    bits = _random_finite_bits(20000)
    got = precision.round_to_bf16(bits.view(np.float32)).view(np.uint32)
    np.testing.assert_array_equal(got, _nearest(bits, 16, ties_away=False))


def test_bf16_matches_torch():
    torch = pytest.importorskip("torch")
    bits = _random_finite_bits(20000)
    x = bits.view(np.float32)
    want = torch.tensor(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(precision.to_bf16_bits(x), want)
    np.testing.assert_array_equal(precision.round_to_bf16(x), torch.tensor(x).to(torch.bfloat16).float().numpy())


def test_rounded_values_are_fixed_points_and_shapes_are_kept():
    x = np.random.default_rng(1).standard_normal((3, 4, 5)).astype(np.float32)
    for fn in (precision.round_to_tf32, precision.round_to_bf16):
        once = fn(x)
        assert once.shape == x.shape and once.dtype == np.float32
        np.testing.assert_array_equal(fn(once), once)
    assert not np.any(precision.round_to_tf32(x).view(np.uint32) & 0x1FFF)
    assert precision.to_bf16_bits(x).shape == x.shape


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(TypeError, match="round_to_tf32: expected a float32 array, got float64"):
        precision.round_to_tf32(np.zeros(2))
    with pytest.raises(TypeError, match="from_bf16_bits: expected a uint16"):
        precision.from_bf16_bits(np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="precision: expected one of auto, fp32, tf32, bf16, got 'fp16'"):
        precision.check_precision("fp16")
    with pytest.raises(ValueError, match="resolve precision 'auto'"):
        precision.operand_rounding("auto")


def test_operand_rounding_picks_the_rounding():
    x = _f(0x3F801000, 0x3F818000)
    assert _bits(precision.operand_rounding("fp32")(x)) == _bits(x)
    assert _bits(precision.operand_rounding("tf32")(x)) == _bits(precision.round_to_tf32(x))
    assert _bits(precision.operand_rounding("bf16")(x)) == _bits(precision.round_to_bf16(x))
    assert precision.PRECISIONS == ("auto", "fp32", "tf32", "bf16")


# ---- kernels/tc.cuh on the emulator ------------------------------------------------------------
TC_TEST_KERNELS = r"""// Test kernels for kernels/tc.cuh: one warp per 16 x 8 tile; fragments loaded straight from
// global memory by the documented layouts (g = lane / 4, t = lane % 4).
#include "tc.cuh"

extern "C" __global__ void tc_convert(unsigned int* __restrict__ tf32, unsigned int* __restrict__ bf16x2,
                                      const float* __restrict__ x, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) tf32[i] = tc_f32_to_tf32(x[i]);
    if (2 * i + 1 < n) bf16x2[i] = tc_pack_bf16x2(x[2 * i], x[2 * i + 1]);
}

// a (tiles, 16, 8) row-major, b (tiles, 8, 8) as [k][n], c and d (tiles, 16, 8). round: operands
// through tc_f32_to_tf32 (else raw fp32 bits: the mma reads only their top 19 bits).
extern "C" __global__ void mma_tf32_test(float* __restrict__ d, const float* __restrict__ a,
                                         const float* __restrict__ b, const float* __restrict__ c, int round)
{
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    const float* A = a + blockIdx.x * 128;
    const float* B = b + blockIdx.x * 64;
    const float* C = c + blockIdx.x * 128;
    const float av[4] = {A[g * 8 + t], A[(g + 8) * 8 + t], A[g * 8 + t + 4], A[(g + 8) * 8 + t + 4]};
    const float bv[2] = {B[t * 8 + g], B[(t + 4) * 8 + g]};
    uint32_t af[4], bf[2];
    for (int i = 0; i < 4; ++i) af[i] = round ? tc_f32_to_tf32(av[i]) : __float_as_uint(av[i]);
    for (int i = 0; i < 2; ++i) bf[i] = round ? tc_f32_to_tf32(bv[i]) : __float_as_uint(bv[i]);
    float acc[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    tc_mma_tf32_m16n8k8(acc, af, bf, acc);  // d aliasing c, as kernels accumulate
    float* D = d + blockIdx.x * 128;
    D[g * 8 + 2 * t] = acc[0];
    D[g * 8 + 2 * t + 1] = acc[1];
    D[(g + 8) * 8 + 2 * t] = acc[2];
    D[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// a (tiles, 16, 16) row-major, b (tiles, 16, 8) as [k][n], c and d (tiles, 16, 8).
extern "C" __global__ void mma_bf16_test(float* __restrict__ d, const float* __restrict__ a,
                                         const float* __restrict__ b, const float* __restrict__ c)
{
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    const float* A = a + blockIdx.x * 256;
    const float* B = b + blockIdx.x * 128;
    const float* C = c + blockIdx.x * 128;
    uint32_t af[4], bf[2];
    af[0] = tc_pack_bf16x2(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
    af[1] = tc_pack_bf16x2(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
    af[2] = tc_pack_bf16x2(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
    af[3] = tc_pack_bf16x2(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
    bf[0] = tc_pack_bf16x2(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
    bf[1] = tc_pack_bf16x2(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
    const float cf[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    float df[4];
    tc_mma_bf16_m16n8k16(df, af, bf, cf);
    float* D = d + blockIdx.x * 128;
    D[g * 8 + 2 * t] = df[0];
    D[g * 8 + 2 * t + 1] = df[1];
    D[(g + 8) * 8 + 2 * t] = df[2];
    D[(g + 8) * 8 + 2 * t + 1] = df[3];
}

// src: 32 rows of 8 16-bit elements (4 words); shared rows at a pitch of 8 words, lane l points
// at row perm[l]. variant: 0 x4, 1 x2, 2 x4.trans, 3 x2.trans; out (32 lanes, 4 words).
extern "C" __global__ void ldmatrix_test(unsigned int* __restrict__ out, const unsigned int* __restrict__ src,
                                         const int* __restrict__ perm, int variant)
{
    __shared__ __align__(16) unsigned int s[32 * 8];
    const int lane = threadIdx.x;
    for (int w = 0; w < 4; ++w) s[lane * 8 + w] = src[lane * 4 + w];
    __syncthreads();
    const void* row = s + perm[lane] * 8;
    uint32_t r[4] = {0u, 0u, 0u, 0u};
    if (variant == 0) tc_ldmatrix_x4(r, row);
    else if (variant == 1) tc_ldmatrix_x2(r, row);
    else if (variant == 2) tc_ldmatrix_x4_trans(r, row);
    else tc_ldmatrix_x2_trans(r, row);
    for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

// Two cp.async groups into shared memory: group 0 of 16-byte copies (element i valid while
// i < n, else zero fill), group 1 of 4-byte copies. out (3, 128): group 0 and group 1 after
// wait_group 1, group 1 after wait_group 0. mode 1 reads without any wait (a kernel bug).
extern "C" __global__ void cp_async_test(float* __restrict__ out, const float* __restrict__ src, int n, int mode)
{
    __shared__ __align__(16) float s0[128];
    __shared__ __align__(16) float s1[128];
    const int t = threadIdx.x;  // 32 threads
    tc_cp_async_16(s0 + 4 * t, src + 4 * t, 4 * t < n);
    tc_cp_async_commit();
    for (int j = 0; j < 4; ++j) tc_cp_async_4(s1 + 32 * j + t, src + 128 + 32 * j + t, 128 + 32 * j + t < n);
    tc_cp_async_commit();
    if (mode == 0) tc_cp_async_wait<1>();
    __syncthreads();
    for (int j = 0; j < 4; ++j) {
        out[32 * j + t] = s0[32 * j + t];
        out[128 + 32 * j + t] = s1[32 * j + t];
    }
    __syncthreads();
    if (mode == 0) tc_cp_async_wait_all();
    __syncthreads();
    for (int j = 0; j < 4; ++j) out[256 + 32 * j + t] = s1[32 * j + t];
}

// Only half the warp reaches the mma: must be reported, not hang.
extern "C" __global__ void mma_half_warp(float* __restrict__ d)
{
    uint32_t a[4] = {0u, 0u, 0u, 0u}, b[2] = {0u, 0u};
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (threadIdx.x < 16) tc_mma_tf32_m16n8k8(c, a, b, c);
    d[threadIdx.x] = c[0];
}
"""

BROKEN_A1 = "A[(g + 8) * 8 + t], A[g * 8 + t + 4]"  # a[1] must be row g + 8


def _folder(tmp_path_factory, name: str, text: str, header: str | None = None):
    folder = tmp_path_factory.mktemp(name)
    (folder / "tc_test.cu").write_text(text)
    for cuh in sources.kernel_dir().glob("*.cuh"):
        shutil.copy(cuh, folder / cuh.name)
    if header is not None:
        (folder / "tc.cuh").write_text(header)
    return folder


@pytest.fixture(scope="module")
def tc(tmp_path_factory):
    return EmulatedLauncher(kernel_folder=_folder(tmp_path_factory, "tc_kernels", TC_TEST_KERNELS))


def _tf32_case(rng, tiles, integer):
    if integer:
        a = rng.integers(-8, 9, (tiles, 16, 8)).astype(np.float32)
        b = rng.integers(-8, 9, (tiles, 8, 8)).astype(np.float32)
        c = rng.integers(-64, 65, (tiles, 16, 8)).astype(np.float32)
    else:
        a, b, c = (rng.standard_normal(s).astype(np.float32) for s in ((tiles, 16, 8), (tiles, 8, 8), (tiles, 16, 8)))
    return a, b, c


def _run_tf32(launcher, a, b, c, round_operands=True):
    d = np.full(c.shape, np.nan, np.float32)
    launcher.launch("mma_tf32_test", (a.shape[0],), (32,), (d, a, b, c, np.int32(round_operands)))
    return d


def _reference(a, b, c):
    return (a.astype(np.float64) @ b.astype(np.float64) + c).astype(np.float32)


def test_conversions_match_the_numpy_reference(tc):
    bits = np.random.default_rng(11).integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    bits[:16] = [0x3F801000, 0xBF801000, 0x3F808000, 0x3F818000, 0x7F7FF000, 0x7F7F8000, 0x00001000,
                 0x00018000, 0x7F800001, 0xFF800001, 0x7F800000, 0x80000000, 0x3F803000, 0xBF818000, 0, 1]
    x = bits.view(np.float32)
    tf32 = np.zeros(x.size, np.uint32)
    bf16x2 = np.zeros(x.size // 2, np.uint32)
    tc.launch("tc_convert", (x.size // 128,), (128,), (tf32, bf16x2, x, np.int32(x.size)))
    nan = np.isnan(x)
    want = precision.round_to_tf32(x).view(np.uint32)
    np.testing.assert_array_equal(tf32[~nan], want[~nan])
    assert np.all(np.isnan(tf32[nan].view(np.float32)))
    halves = np.stack([bf16x2 & 0xFFFF, bf16x2 >> 16], axis=1).reshape(-1).astype(np.uint16)  # lo first
    want16 = precision.to_bf16_bits(x)
    np.testing.assert_array_equal(halves[~nan], want16[~nan])
    assert np.all(np.isnan(precision.from_bf16_bits(halves[nan])))


def test_tf32_mma_of_integers_is_exact(tc):
    """Exact integer results pin every fragment position of A, B, C and D."""
    a, b, c = _tf32_case(np.random.default_rng(0), 3, integer=True)
    np.testing.assert_array_equal(_run_tf32(tc, a, b, c), _reference(a, b, c))


def test_tf32_mma_rounds_operands_like_the_reference(tc):
    a, b, c = _tf32_case(np.random.default_rng(1), 4, integer=False)
    got = _run_tf32(tc, a, b, c)
    want = _reference(precision.round_to_tf32(a), precision.round_to_tf32(b), c)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.abs(got - _reference(a, b, c)).max() > 1e-4  # the rounding is really there
    # Raw fp32 registers: the tensor core reads only the top 19 bits (truncation).
    trunc = lambda v: (v.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)  # noqa: E731
    raw = _run_tf32(tc, a, b, c, round_operands=False)
    np.testing.assert_allclose(raw, _reference(trunc(a), trunc(b), c), rtol=1e-6, atol=1e-6)


def test_bf16_mma_of_integers_is_exact(tc):
    rng = np.random.default_rng(2)
    a = rng.integers(-16, 17, (3, 16, 16)).astype(np.float32)
    b = rng.integers(-16, 17, (3, 16, 8)).astype(np.float32)
    c = rng.integers(-1000, 1001, (3, 16, 8)).astype(np.float32)
    d = np.full(c.shape, np.nan, np.float32)
    tc.launch("mma_bf16_test", (3,), (32,), (d, a, b, c))
    np.testing.assert_array_equal(d, _reference(a, b, c))


def test_bf16_mma_rounds_operands_like_the_reference(tc):
    rng = np.random.default_rng(3)
    a, b, c = (rng.standard_normal(s).astype(np.float32) for s in ((4, 16, 16), (4, 16, 8), (4, 16, 8)))
    d = np.full(c.shape, np.nan, np.float32)
    tc.launch("mma_bf16_test", (4,), (32,), (d, a, b, c))
    np.testing.assert_allclose(d, _reference(precision.round_to_bf16(a), precision.round_to_bf16(b), c),
                               rtol=1e-6, atol=1e-6)
    assert np.abs(d - _reference(a, b, c)).max() > 1e-3


def _ldmatrix_model(words: np.ndarray, perm: np.ndarray, matrices: int, trans: bool) -> np.ndarray:
    """words: (32 rows, 4) uint32 = 8 uint16 per row; out (32 lanes, 4) as ldmatrix defines it."""
    halves = words.view(np.uint16).reshape(32, 8)  # little endian: element 2q in the low half of word q
    out = np.zeros((32, 4), np.uint32)
    for i in range(matrices):
        m = halves[perm[8 * i : 8 * i + 8]]  # matrix i: rows addressed by lanes 8i..8i+7
        if trans:
            m = m.T
        for lane in range(32):
            p, q = divmod(lane, 4)
            out[lane, i] = int(m[p, 2 * q]) | (int(m[p, 2 * q + 1]) << 16)
    return out


@pytest.mark.parametrize("variant, matrices, trans", [(0, 4, False), (1, 2, False), (2, 4, True), (3, 2, True)],
                         ids=["x4", "x2", "x4_trans", "x2_trans"])
def test_ldmatrix_matches_the_layout(tc, variant, matrices, trans):
    rng = np.random.default_rng(20 + variant)
    words = rng.integers(0, 2**32, (32, 4), dtype=np.uint64).astype(np.uint32)
    perm = rng.permutation(32).astype(np.int32)  # every lane brings its own row address
    out = np.zeros((32, 4), np.uint32)
    tc.launch("ldmatrix_test", (1,), (32,), (out, words, perm, np.int32(variant)))
    np.testing.assert_array_equal(out, _ldmatrix_model(words, perm, matrices, trans))


def test_ldmatrix_of_fp32_rows_gives_the_tf32_a_fragment(tc):
    """What the tf32 kernels rely on: 8 rows of 4 words, lane l gets word l % 4 of row l / 4."""
    words = np.arange(128, dtype=np.uint32).reshape(32, 4)
    out = np.zeros((32, 4), np.uint32)
    tc.launch("ldmatrix_test", (1,), (32,), (out, words, np.arange(32, dtype=np.int32), np.int32(0)))
    lanes = np.arange(32)
    for i in range(4):
        np.testing.assert_array_equal(out[:, i], words[8 * i + lanes // 4, lanes % 4])


def test_cp_async_lands_at_the_wait_with_zero_fill(tc):
    src = np.arange(1, 257, dtype=np.float32)
    for n in (256, 100):  # 100: the tail of group 0 and all of group 1 are zero-filled
        out = np.zeros(384, np.float32)
        tc.launch("cp_async_test", (1,), (32,), (out, src, np.int32(n), np.int32(0)))
        valid = np.where(np.arange(256) < n, src, 0.0).astype(np.float32)
        np.testing.assert_array_equal(out[:128], valid[:128])  # group 0 after wait_group 1
        assert np.all(np.isnan(out[128:256]))  # group 1 still in flight: poisoned
        np.testing.assert_array_equal(out[256:], valid[128:])  # after wait_all


def test_a_kernel_without_the_wait_reads_nan(tc):
    out = np.zeros(384, np.float32)
    tc.launch("cp_async_test", (1,), (32,), (out, np.ones(256, np.float32), np.int32(256), np.int32(1)))
    assert np.all(np.isnan(out))


def test_an_mma_in_half_a_warp_is_reported(tc):
    with pytest.raises(RuntimeError, match=r"emulated kernel mma_half_warp: lane 16 of warp 0 .* exited while "
                                           r"lane 0 waits for it in tc_mma_tf32_m16n8k8"):
        tc.launch("mma_half_warp", (1,), (32,), (np.zeros(32, np.float32),))


def test_the_scan_runs_tc_kernels_as_fibers(tc):
    assert tc.index["mma_tf32_test"].uses_barriers and tc.index["ldmatrix_test"].uses_barriers
    assert not tc.index["tc_convert"].uses_barriers


def test_a_broken_fragment_index_fails(tmp_path_factory):
    assert TC_TEST_KERNELS.count(BROKEN_A1) == 1
    broken = TC_TEST_KERNELS.replace(BROKEN_A1, "A[g * 8 + t], A[g * 8 + t + 4]")
    launcher = EmulatedLauncher(kernel_folder=_folder(tmp_path_factory, "tc_broken_kernel", broken))
    a, b, c = _tf32_case(np.random.default_rng(0), 3, integer=True)
    assert not np.array_equal(_run_tf32(launcher, a, b, c), _reference(a, b, c))


def test_a_broken_emulation_layout_fails(tmp_path_factory):
    """The integer test pins the emulation too: swap a[1] and a[2] in tc.cuh's model."""
    header = (sources.kernel_dir() / "tc.cuh").read_text()
    needle = "a[g + 8][t] = tf32_operand(ar[1]);"
    assert header.count(needle) == 1
    broken = header.replace(needle, "a[g + 8][t] = tf32_operand(ar[2]);").replace(
        "a[g][t + 4] = tf32_operand(ar[2]);", "a[g][t + 4] = tf32_operand(ar[1]);")
    launcher = EmulatedLauncher(kernel_folder=_folder(tmp_path_factory, "tc_broken_header", TC_TEST_KERNELS, broken))
    a, b, c = _tf32_case(np.random.default_rng(0), 3, integer=True)
    assert not np.array_equal(_run_tf32(launcher, a, b, c), _reference(a, b, c))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_the_test_kernels_compile_to_machine_code(arch):
    if nvrtc_check.load_nvrtc() is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc, or set GPUCNN_NVRTC)")
    result = nvrtc_check.compile_source(TC_TEST_KERNELS, "tc_test.cu", arch)
    assert result.ok, result.log
    assert "warning" not in result.log, result.log
