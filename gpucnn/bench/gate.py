"""The correctness gate: before an op is timed, its output must match the NumPy reference.

The op runs on the benchmark backend in float32 at a (possibly smaller) batch; the reference
is ``numpy_ops`` in float64 on the same values. The error of each output is
``max|ours - ref| / max|ref|`` and must stay under ``1e-4 * max(1, sqrt(L / 64))`` where L
is the op's reduction length (terms summed per output value). Integer outputs (max-pool
argmax) must match exactly. In tf32/bf16 (``backend.precision``) the reference of the GEMM ops
is the NumPy backend in the same precision (operands rounded alike, float32 sums; its own
error is far under the tolerance), since only that is what the tensor cores should compute.
A failure raises ``BenchCheckError`` with the op, the shape and
the error: one line, non-zero exit at the CLI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gpucnn.bench.cases import OpCase, build_case, output_arrays
from gpucnn.bench.shapes import Shape
from gpucnn.errors import GpucnnError
from gpucnn.ops import numpy_ops

BASE_RTOL = 1e-4


class BenchCheckError(GpucnnError):
    """A kernel's output disagrees with the NumPy reference; timing it would be meaningless."""


@dataclass
class CheckResult:
    """Worst normalized error over the op's outputs, the tolerance and the batch it ran at."""

    max_rel_err: float
    tol: float
    batch: int | None

    def as_dict(self) -> dict:
        return {"max_rel_err": self.max_rel_err, "tol": self.tol, "batch": self.batch}


def tolerance(reduction: int) -> float:
    """Relative tolerance for an op that sums ``reduction`` terms per output in float32."""
    return BASE_RTOL * max(1.0, math.sqrt(reduction / 64.0))


def to_device(args: list, backend) -> list:
    """Copy the array arguments to the backend's device (fresh copies: ops may work in place)."""
    return [backend.asarray(a.copy()) if isinstance(a, np.ndarray) else a for a in args]


def to_float64(args: list) -> list:
    return [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32 else
            (a.copy() if isinstance(a, np.ndarray) else a) for a in args]


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    if ours.shape != ref.shape:
        return math.inf
    if ref.dtype.kind in "iu":
        return float(np.count_nonzero(ours != ref)) / max(1, ref.size)
    ours64 = ours.astype(np.float64)
    if not np.all(np.isfinite(ours64)):
        return math.inf
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(ours64 - ref))) if ref.size else 0.0
    return diff / max(scale, 1e-30)


_REFERENCE_CACHE: dict[tuple, list[np.ndarray]] = {}


def _reference(op: str, small: Shape, seed: int, case: OpCase, precision: str = "fp32") -> list[np.ndarray]:
    """float64 NumPy outputs of ``case``, cached so that kernel variants share one reference."""
    key = (op, small.label, seed, precision)
    if key not in _REFERENCE_CACHE:
        if len(_REFERENCE_CACHE) > 8:
            _REFERENCE_CACHE.clear()
        if precision == "fp32":
            ref_args = to_float64(case.args)
            outputs = output_arrays(getattr(numpy_ops, op)(*ref_args), ref_args, case)
        else:
            from gpucnn.backend import NumpyOps

            ref_args = [a.copy() if isinstance(a, np.ndarray) else a for a in case.args]
            outputs = output_arrays(getattr(NumpyOps(numpy_ops, precision), op)(*ref_args), ref_args, case)
            outputs = [o.astype(np.float64) if o.dtype == np.float32 else o for o in outputs]
        _REFERENCE_CACHE[key] = outputs
    return _REFERENCE_CACHE[key]


def check_op(op: str, shape: Shape, backend, gate_batch: int, seed: int = 0) -> CheckResult:
    """Run ``op`` on ``backend`` and on float64 NumPy at batch ``min(N, gate_batch)``; raise on mismatch."""
    small = shape.with_batch(min(shape.params["N"], gate_batch)) if "N" in shape.params else shape
    case: OpCase = build_case(op, small, np.random.default_rng(seed))
    where = f"{op} on {shape.label}" + (f" (checked at N={small.params['N']})" if "N" in small.params else "")
    dev_args = to_device(case.args, backend)
    try:
        ours_out = output_arrays(getattr(backend.ops, op)(*dev_args), dev_args, case)
    except Exception as exc:  # a kernel that cannot run is as wrong as one that computes garbage
        text = " ".join(str(exc).split())[:300]
        raise BenchCheckError(f"bench check failed: {where}: the op raised {type(exc).__name__}: {text}") from exc
    ref_out = _reference(op, small, seed, case, getattr(backend, "precision", "fp32"))
    tol = tolerance(case.reduction)
    if len(ours_out) != len(ref_out):
        raise BenchCheckError(f"bench check failed: {where}: returned {len(ours_out)} arrays, "
                              f"the NumPy reference returns {len(ref_out)}")
    worst = 0.0
    for index, (ours, ref) in enumerate(zip(ours_out, ref_out)):
        ours_host = np.asarray(backend.to_host(ours))
        ref_host = np.asarray(ref)
        err = _rel_err(ours_host, ref_host)
        limit = 0.0 if ref_host.dtype.kind in "iu" else tol
        if not err <= limit:
            detail = (f"shape {ours_host.shape} != reference {ref_host.shape}" if ours_host.shape != ref_host.shape
                      else f"max relative error {err:.3g} > tolerance {limit:.3g}")
            raise BenchCheckError(f"bench check failed: {where}: output {index}: {detail}")
        worst = max(worst, err if ref_host.dtype.kind == "f" else 0.0)
    return CheckResult(worst, tol, small.params.get("N"))
