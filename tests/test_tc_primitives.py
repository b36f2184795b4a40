"""Tensor-core primitives: the NumPy reference rounding (gpucnn.precision) against hand-computed
bit patterns, an independent nearest-neighbour model and torch; kernels/tc.cuh on the emulator."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import precision


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
