"""Convolution (cross-correlation) on NumPy: im2col + one GEMM per pass.

Shapes: x (N, C, H, W), w (O, C, KH, KW), b (O,), y (N, O, OH, OW) with
OH = (H + 2*ph - KH)//sh + 1. The column matrix has one row per filter tap
(C*KH*KW rows) and one column per output pixel (N*OH*OW columns); the backward pass
to the data scatters it back with a loop over the KH*KW kernel offsets (col2im).

``precision`` (fp32, tf32 or bf16; the backend passes its own): the two GEMM operands of
each pass are rounded with ``gpucnn.precision.operand_rounding`` before the GEMM, which
then sums in float32 as in fp32 mode; the bias and its gradient stay full precision. This
is the reference for the tensor-core kernels. fp32 runs the same code as before, unrounded.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from gpucnn.ops import gemm_relu
from gpucnn.ops.np_activations import relu_forward
from gpucnn.precision import operand_rounding


def round_operands(precision: str, *arrays):
    """The GEMM operands ``arrays`` rounded to ``precision``; fp32 returns them untouched.

    The reduced precisions round float32 values (as the tensor cores do); float64 arrays
    are refused there, since rounding them would hide what a float64 gradient check tests.
    """
    if precision == "fp32":
        return arrays
    rounding = operand_rounding(precision)
    for a in arrays:
        if a.dtype != np.float32:
            raise TypeError(f"precision {precision} rounds float32 GEMM operands; got {a.dtype} "
                            "(float64 runs use precision fp32)")
    return tuple(rounding(np.ascontiguousarray(a)) for a in arrays)


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length along one axis: (size + 2*padding - kernel)//stride + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def pad_spatial(x: np.ndarray, padding, value: float = 0.0) -> np.ndarray:
    """Pad the last two axes of (N, C, H, W) by (ph, pw) on both sides with ``value``."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant", constant_values=value)


def window_view(xp: np.ndarray, kernel, stride, out_hw) -> np.ndarray:
    """Read-only strided view (N, C, OH, OW, KH, KW) of the windows of a padded input."""
    n, c = xp.shape[:2]
    kh, kw = kernel
    sh, sw = stride
    oh, ow = out_hw
    s0, s1, s2, s3 = xp.strides
    return as_strided(
        xp, (n, c, oh, ow, kh, kw), (s0, s1, s2 * sh, s3 * sw, s2, s3), writeable=False
    )


def im2col(x: np.ndarray, kernel, stride, padding) -> tuple[np.ndarray, int, int]:
    """Columns (C*KH*KW, N*OH*OW) of x (N, C, H, W), with OH and OW.

    Row (c, i, j) holds x_padded[n, c, oh*sh + i, ow*sw + j] for every output pixel
    (n, oh, ow); this layout copies along contiguous input rows, the fast direction.
    """
    n, c, h, w = x.shape
    oh = output_size(h, kernel[0], stride[0], padding[0])
    ow = output_size(w, kernel[1], stride[1], padding[1])
    windows = window_view(pad_spatial(x, padding), kernel, stride, (oh, ow))
    cols = windows.transpose(1, 4, 5, 0, 2, 3).reshape(c * kernel[0] * kernel[1], n * oh * ow)
    return cols, oh, ow


def col2im(cols: np.ndarray, x_shape, kernel, stride, padding) -> np.ndarray:
    """Inverse scatter of im2col: add columns (C*KH*KW, N*OH*OW) back into dx (N, C, H, W).

    One strided add per kernel offset (KH*KW of them), each over whole (C, N, OH, OW) blocks.
    """
    n, c, h, w = x_shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    oh = output_size(h, kh, sh, ph)
    ow = output_size(w, kw, sw, pw)
    blocks = cols.reshape(c, kh, kw, n, oh, ow)
    dx = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] += blocks[:, i, j]
    return np.ascontiguousarray(dx[:, :, ph : ph + h, pw : pw + w].transpose(1, 0, 2, 3))


def gemm_activation(op: str, activation, y):
    """``y`` through the fused activation of conv2d_forward/dense_forward (the ReLU layer's own
    function, so a fused layer is bit for bit the unfused pair)."""
    return relu_forward(y) if gemm_relu(op, activation) else y


def conv2d_forward(x, w, b, stride, padding, activation=None, precision="fp32"):
    """y (N, O, OH, OW) = act(cross-correlation of x (N, C, H, W) with w (O, C, KH, KW) + b (O,))."""
    x, w = round_operands(precision, x, w)
    n = x.shape[0]
    o = w.shape[0]
    cols, oh, ow = im2col(x, w.shape[2:], stride, padding)
    y = w.reshape(o, -1) @ cols  # (O, N*OH*OW)
    if b is not None:
        y += b[:, None]
    return gemm_activation("conv2d_forward", activation,
                           np.ascontiguousarray(y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3)))


def _delta_matrix(dy):
    """dy (N, O, OH, OW) as (O, N*OH*OW)."""
    return dy.transpose(1, 0, 2, 3).reshape(dy.shape[1], -1)


def conv2d_backward_data(dy, w, x_shape, stride, padding, precision="fp32"):
    """dx (N, C, H, W): the delta map dy (N, O, OH, OW) sent back through the filter w.

    Equals the full convolution of the stride-dilated delta map with the 180-degree
    rotated filter, zero padded (seed 002); computed as W^T @ dy then col2im.
    """
    dy, w = round_operands(precision, dy, w)
    o = w.shape[0]
    dcols = w.reshape(o, -1).T @ _delta_matrix(dy)  # (C*KH*KW, N*OH*OW)
    return col2im(dcols, x_shape, w.shape[2:], stride, padding)


def conv2d_backward_filter(dy, x, w_shape, stride, padding, precision="fp32"):
    """dw (O, C, KH, KW): valid correlation of the padded input x with the delta map dy."""
    dy, x = round_operands(precision, dy, x)
    cols, _, _ = im2col(x, w_shape[2:], stride, padding)
    return (_delta_matrix(dy) @ cols.T).reshape(w_shape)


def conv2d_backward_bias(dy):
    """db (O,): the delta map summed over batch and positions."""
    return dy.sum(axis=(0, 2, 3))
