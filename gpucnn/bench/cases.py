"""Benchmark inputs: for an op and a Shape, the host arguments of the op call and its work.

``build_case(op, shape, rng)`` returns an ``OpCase`` whose ``args`` are the positional
arguments of ``ops.<op>(...)`` with arrays as host NumPy float32 (labels/argmax int32);
inputs that depend on a forward pass (argmax, probs, batch-norm statistics) come from
``numpy_ops`` on the same data. ``flops`` is set for the GEMM-like ops (reported in GFLOP/s);
the others are memory bound and are reported in GB/s of the bytes they must move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gpucnn.bench.shapes import Shape
from gpucnn.ops import ACTIVATIONS, numpy_ops

LABEL_SMOOTHING = 0.1
DROPOUT_P = 0.5
DROPOUT_SEED = 12345
SGD_HYPER = (0.01, 0.9, False, 5e-4)  # lr, momentum, nesterov, weight_decay
BN_EPS = 1e-5


@dataclass
class OpCase:
    """One op call: ``args`` (host), FLOPs (or None), the reduction length, in-place arg indices."""

    op: str
    shape: Shape
    args: list
    flops: float | None
    reduction: int
    inplace: tuple[int, ...] = ()

    def array_bytes(self) -> int:
        """Bytes of every array argument (each is read at least once)."""
        return int(sum(a.nbytes for a in self.args if isinstance(a, np.ndarray)))


def _normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _conv_case(op: str, shape: Shape, rng) -> OpCase:
    p = shape.params
    n, c, h, w, o, k, s, pad = (p[key] for key in ("N", "C", "H", "W", "O", "K", "S", "P"))
    oh, ow = shape.out_hw()
    stride, padding = (s, s), (pad, pad)
    flops = 2.0 * n * o * c * k * k * oh * ow
    x_shape, w_shape = (n, c, h, w), (o, c, k, k)
    # Scale like He init so that outputs stay O(1) at every channel count.
    weight = _normal(rng, *w_shape) * np.float32(math.sqrt(2.0 / (c * k * k)))
    if op == "conv2d_forward":
        args = [_normal(rng, *x_shape), weight, _normal(rng, o), stride, padding]
        return OpCase(op, shape, args, flops, c * k * k)
    dy = _normal(rng, n, o, oh, ow)
    if op == "conv2d_backward_data":
        return OpCase(op, shape, [dy, weight, x_shape, stride, padding], flops, o * k * k)
    if op == "conv2d_backward_filter":
        return OpCase(op, shape, [dy, _normal(rng, *x_shape), w_shape, stride, padding], flops, n * oh * ow)
    if op == "conv2d_backward_bias":
        return OpCase(op, shape, [dy], None, n * oh * ow)
    raise KeyError(op)


def _pool_case(op: str, shape: Shape, rng) -> OpCase:
    p = shape.params
    x_shape = (p["N"], p["C"], p["H"], p["W"])
    kernel, stride, padding = (p["K"],) * 2, (p["S"],) * 2, (p["P"],) * 2
    x = _normal(rng, *x_shape)
    oh, ow = shape.out_hw()
    if op == "maxpool2d_forward":
        return OpCase(op, shape, [x, kernel, stride, padding], None, p["K"] * p["K"])
    if op == "maxpool2d_backward":
        _, argmax = numpy_ops.maxpool2d_forward(x, kernel, stride, padding)
        dy = _normal(rng, p["N"], p["C"], oh, ow)
        return OpCase(op, shape, [dy, np.ascontiguousarray(argmax, dtype=np.int32), x_shape], None, p["K"] * p["K"])
    if op == "avgpool2d_forward":
        return OpCase(op, shape, [x, kernel, stride, padding], None, p["K"] * p["K"])
    if op == "avgpool2d_backward":
        dy = _normal(rng, p["N"], p["C"], oh, ow)
        return OpCase(op, shape, [dy, x_shape, kernel, stride, padding], None, p["K"] * p["K"])
    raise KeyError(op)


_ACTIVATIONS = {a.name: a for a in ACTIVATIONS}


def _act_case(op: str, shape: Shape, rng) -> OpCase:
    p = shape.params
    dims = (p["N"], p["C"], p["H"], p["W"])
    x = _normal(rng, *dims)
    name, _, direction = op.rpartition("_")
    if op == "dropout_forward":
        return OpCase(op, shape, [x, DROPOUT_P, DROPOUT_SEED], None, 1)
    if op == "dropout_backward":
        _, mask = numpy_ops.dropout_forward(x, DROPOUT_P, DROPOUT_SEED)
        return OpCase(op, shape, [_normal(rng, *dims), np.ascontiguousarray(mask, dtype=np.float32)], None, 1)
    if direction == "forward":
        return OpCase(op, shape, [x], None, 1)
    dy = _normal(rng, *dims)
    if _ACTIVATIONS[name].cached == "output":
        return OpCase(op, shape, [dy, getattr(numpy_ops, f"{name}_forward")(x)], None, 1)
    return OpCase(op, shape, [dy, x], None, 1)


def _bn_case(op: str, shape: Shape, rng) -> OpCase:
    p = shape.params
    c = p["C"]
    x = _normal(rng, p["N"], c, p["H"], p["W"]) * np.float32(2.0) + np.float32(0.5)
    gamma = (1.0 + 0.1 * _normal(rng, c)).astype(np.float32)
    beta = _normal(rng, c) * np.float32(0.1)
    reduction = p["N"] * p["H"] * p["W"]
    if op == "batchnorm2d_forward":
        return OpCase(op, shape, [x, gamma, beta, BN_EPS], None, reduction)
    if op == "batchnorm2d_inference":
        running_mean = _normal(rng, c) * np.float32(0.1)
        running_var = (1.0 + 0.1 * np.abs(_normal(rng, c))).astype(np.float32)
        return OpCase(op, shape, [x, gamma, beta, running_mean, running_var, BN_EPS], None, 1)
    if op == "batchnorm2d_backward":
        _, mean, invstd, _ = numpy_ops.batchnorm2d_forward(x, gamma, beta, BN_EPS)
        dy = _normal(rng, *x.shape)
        args = [dy, x, gamma, np.asarray(mean, np.float32), np.asarray(invstd, np.float32)]
        return OpCase(op, shape, args, None, reduction)
    raise KeyError(op)


def _dense_case(op: str, shape: Shape, rng) -> OpCase:
    n, i, o = (shape.params[k] for k in ("N", "I", "O"))
    x = _normal(rng, n, i)
    w = _normal(rng, o, i) * np.float32(math.sqrt(2.0 / i))
    if op == "dense_forward":
        return OpCase(op, shape, [x, w, _normal(rng, o)], 2.0 * n * i * o, i)
    if op == "dense_backward":
        return OpCase(op, shape, [_normal(rng, n, o), x, w], 4.0 * n * i * o, max(n, o))
    raise KeyError(op)


def _loss_case(op: str, shape: Shape, rng) -> OpCase:
    n, k = shape.params["N"], shape.params["K"]
    logits = _normal(rng, n, k) * np.float32(3.0)
    labels = rng.integers(0, k, size=n).astype(np.int32)
    if op == "softmax_cross_entropy_forward":
        return OpCase(op, shape, [logits, labels, LABEL_SMOOTHING], None, n * k)
    if op == "softmax_cross_entropy_backward":
        _, probs = numpy_ops.softmax_cross_entropy_forward(logits, labels, LABEL_SMOOTHING)
        return OpCase(op, shape, [np.asarray(probs, np.float32), labels, LABEL_SMOOTHING], None, k)
    if op == "mse_forward":
        return OpCase(op, shape, [logits, _normal(rng, n, k)], None, n * k)
    if op == "mse_backward":
        return OpCase(op, shape, [logits, _normal(rng, n, k)], None, 1)
    raise KeyError(op)


def _sgd_case(op: str, shape: Shape, rng) -> OpCase:
    size = shape.params["P"]
    args = [_normal(rng, size), _normal(rng, size), _normal(rng, size), *SGD_HYPER]
    return OpCase(op, shape, args, None, 1, inplace=(0, 2))


_BUILDERS = {
    "conv": _conv_case, "pool": _pool_case, "act": _act_case, "bn": _bn_case,
    "dense": _dense_case, "loss": _loss_case, "sgd": _sgd_case,
}


def build_case(op: str, shape: Shape, rng: np.random.Generator) -> OpCase:
    """The host arguments and work of ``op`` on ``shape``."""
    return _BUILDERS[shape.family](op, shape, rng)


def output_arrays(result, call_args: list, case: OpCase) -> list:
    """The arrays an op call produced: its in-place arguments, or its return value(s)."""
    if case.inplace:
        return [call_args[i] for i in case.inplace]
    if isinstance(result, tuple):
        return [r for r in result if r is not None]
    return [result]
