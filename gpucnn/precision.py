"""Reduced-precision rounding on NumPy: the reference for the tensor-core kernels.

The one owner of these facts (kernels/tc.cuh implements the same rounding in CUDA and in
its CPU emulation, and the tests pin both to this module):

* ``tf32``: 1 sign, 8 exponent, 10 mantissa bits, stored in a float32 with the low 13
  mantissa bits zero. Rounding is to nearest with ties AWAY from zero, as PTX
  ``cvt.rna.tf32.f32``; a value past the largest TF32 number rounds to infinity.
* ``bf16``: the top 16 bits of a float32 (1 sign, 8 exponent, 7 mantissa bits). Rounding
  is to nearest with ties to EVEN, as PTX ``cvt.rn.bf16.f32`` (and torch's ``.to(bfloat16)``).

Both keep the float32 exponent range, so subnormals stay subnormal (rounded like any other
mantissa) and only values near float32's maximum overflow. NaN stays NaN (made quiet,
sign kept); +-Inf stays +-Inf.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

PRECISIONS = ("auto", "fp32", "tf32", "bf16")

_EXPONENT = np.uint32(0x7F800000)
_MANTISSA = np.uint32(0x007FFFFF)
_QUIET = np.uint32(0x00400000)


def _float32_bits(x, name: str) -> np.ndarray:
    array = np.asarray(x)
    if array.dtype != np.float32:
        raise TypeError(f"{name}: expected a float32 array, got {array.dtype.name}")
    return array.view(np.uint32)


def _is_nan(bits: np.ndarray) -> np.ndarray:
    return ((bits & _EXPONENT) == _EXPONENT) & ((bits & _MANTISSA) != 0)


def round_to_tf32(x: np.ndarray) -> np.ndarray:
    """``x`` (any shape, float32) rounded to TF32 like ``cvt.rna.tf32.f32``; float32, same shape.

    Adding half of the dropped unit (0x1000) to the sign-magnitude bits and truncating is
    round-half-away-from-zero; a carry into the exponent is the correct next power of two
    (or infinity past the largest TF32 value).
    """
    bits = _float32_bits(x, "round_to_tf32")
    rounded = (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    rounded = np.where(_is_nan(bits), (bits | _QUIET) & np.uint32(0xFFFFE000), rounded)
    return rounded.astype(np.uint32).view(np.float32)


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """``x`` (any shape, float32) rounded to bfloat16 like ``cvt.rn.bf16.f32``: uint16 bit patterns.

    Round to nearest even: add 0x7FFF plus the lowest kept bit, then drop the low 16 bits.
    """
    bits = _float32_bits(x, "to_bf16_bits")
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = (bits + np.uint32(0x7FFF) + lsb) >> np.uint32(16)
    rounded = np.where(_is_nan(bits), (bits | _QUIET) >> np.uint32(16), rounded)
    return rounded.astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (any shape, uint16) as float32 values (exact), same shape."""
    array = np.asarray(bits)
    if array.dtype != np.uint16:
        raise TypeError(f"from_bf16_bits: expected a uint16 array of bfloat16 bit patterns, got {array.dtype.name}")
    return (array.astype(np.uint32) << np.uint32(16)).view(np.float32)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """``x`` (any shape, float32) rounded to bfloat16 (nearest even), returned as float32."""
    return from_bf16_bits(to_bf16_bits(x))


def check_precision(name: str, where: str = "precision") -> str:
    """``name`` if it is one of PRECISIONS, else a ValueError naming ``where`` and the choices."""
    if name not in PRECISIONS:
        raise ValueError(f"{where}: expected one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def operand_rounding(precision: str) -> Callable[[np.ndarray], np.ndarray]:
    """The rounding a GEMM applies to its float32 operands under ``precision`` (fp32/tf32/bf16).

    ``auto`` is not accepted: the backend resolves it to a concrete precision first.
    """
    check_precision(precision)
    if precision == "auto":
        raise ValueError("operand_rounding: resolve precision 'auto' to fp32, tf32 or bf16 first")
    return {"fp32": np.array, "tf32": round_to_tf32, "bf16": round_to_bf16}[precision]
